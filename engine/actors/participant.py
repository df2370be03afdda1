"""ParticipantActor: one per controller or viewer; delivers to that participant's sink.

It holds no reference to the endpoint: a participant has no path to the endpoint's input
(read-only is structural). Frames come from the EndpointActor, events from the SessionActor.
When the sink is full it drops frames until a keyframe resynchronises it, so a slow viewer
costs nobody else anything.
"""

from __future__ import annotations

import logging
from typing import Any

import pykka

from engine.actors.base import describe_failure, send
from engine.messages import ChildFailed, Frame, Keyframe, Member, Resync, ResyncNeeded

log = logging.getLogger(__name__)


class ParticipantActor(pykka.ThreadingActor):
    def __init__(self, session_ref: Any, member: Member, sink: Any) -> None:
        super().__init__()
        self._session = session_ref
        self._member = member
        self._sink = sink
        self._awaiting_keyframe = False
        self._dropped_since_keyframe = 0
        self.frames_dropped = 0

    def on_receive(self, message: Any) -> None:
        if isinstance(message, Frame):
            self._on_frame(message)
        elif isinstance(message, Keyframe):
            resync = Resync(self._dropped_since_keyframe) if self._awaiting_keyframe else None
            self._awaiting_keyframe = False
            self._dropped_since_keyframe = 0
            self._sink.keyframe(message, resync)
        else:
            self._sink.event(message)

    def _on_frame(self, frame: Frame) -> None:
        if self._awaiting_keyframe:
            self._dropped_since_keyframe += 1
            self.frames_dropped += 1
        elif not self._sink.offer(frame):
            self._awaiting_keyframe = True
            self._dropped_since_keyframe = 1
            self.frames_dropped += 1
            send(self._session, ResyncNeeded(self._member.participant_id, 1))

    def on_stop(self) -> None:
        self._sink.close()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        send(self._session, ChildFailed("participant", self._member.participant_id,
                                        describe_failure(exception_value)))
        try:
            self._sink.close()
        except Exception:
            log.exception("closing the sink of failed participant %s", self._member.participant_id)
