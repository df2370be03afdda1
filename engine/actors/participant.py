"""ParticipantActor: one per controller or viewer. It delivers the session's control events to
the participant's sink, and it is the participant's place in the supervision tree: its
failure is reported to the session, which removes it and goes on.

It holds no reference to the endpoint: a participant has no path to the endpoint's input
(read-only is structural). Frames do not pass through it: the EndpointActor puts them straight
into the participant's bounded sink (see engine/actors/endpoint.py for why).
"""

from __future__ import annotations

import logging
from typing import Any

from engine.actors.base import describe_failure, send
from engine.actors.pool import PooledActor
from engine.messages import ChildFailed, Member

log = logging.getLogger(__name__)


class ParticipantActor(PooledActor):
    def __init__(self, session_ref: Any, member: Member, sink: Any) -> None:
        super().__init__()
        self._session = session_ref
        self._member = member
        self._sink = sink

    def on_receive(self, message: Any) -> None:
        self._sink.event(message)

    def on_stop(self) -> None:
        self._sink.close()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        send(self._session, ChildFailed("participant", self._member.participant_id,
                                        describe_failure(exception_value)))
        try:
            self._sink.close()
        except Exception:
            log.exception("closing the sink of failed participant %s", self._member.participant_id)
