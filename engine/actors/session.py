"""SessionActor: one per live session. It owns the membership and the session's state machine,
asks `engine.policy` for every decision, and writes every decision to the audit log.

Children (one_for_one, both *temporary*: never restarted, a session cannot rebuild them):
- one EndpointActor, which owns the connection and fans out frames;
- one ParticipantActor per controller or viewer. A failed participant is removed and audited,
  and the session goes on; a failed controller is treated as a disconnect (grace period).
"""

from __future__ import annotations

import collections
import itertools
import logging
from dataclasses import replace
from typing import Any

from engine import policy
from engine.actors.base import describe_failure, reply, send
from engine.actors.endpoint import EndpointActor
from engine.actors.participant import ParticipantActor
from engine.actors.pool import PooledActor
from engine.clock import Clock, Timer
from engine.messages import (
    Accepted, AuditEvent, AuditSessionEnded, AuditSessionStarted, ChatPosted, ChildFailed, Describe, Disconnected,
    Eject, Ejected, EndpointFailed, EndpointFinished, EndpointProtocol, EndpointReady, EndpointRetrying, EndReason,
    Expire, Extend, GraceElapsed, Input, InputRefused, Join, Joined, Leave, Member, OpenEndpoint, ParticipantJoined,
    ParticipantLeft, ParticipantStalled, Point, Pointed, Reason, RecordingFailed, RecordingPolicy, Refused,
    RemoteClipboard, Resize, Resized, Role, Say, SessionEnded, SessionFinished, SessionState, SessionSummary, SessionUpdated, SetJointSession, Shutdown,
    StartSession, StateChanged, Subscribe, Terminate, TransferControl, Unsubscribe, User,
)
from engine.metrics import EngineMetrics
from engine.recorder import RECORDER_ID
from engine.recordings import RecordingMeta
from engine.screen import screen_for
from config.settings import EngineSettings

log = logging.getLogger(__name__)


class _Participant:
    __slots__ = ("member", "ref")

    def __init__(self, member: Member, ref: Any) -> None:
        self.member = member
        self.ref = ref


class SessionActor(PooledActor):
    def __init__(self, session_id: str, start: StartSession, *, supervisor: Any, store: Any,
                 clock: Clock, settings: EngineSettings, metrics: EngineMetrics | None = None,
                 recordings: Any = None) -> None:
        super().__init__()
        self._metrics = metrics if metrics is not None else EngineMetrics()
        self._id = session_id
        self._endpoint_spec = start.endpoint
        self._controller = start.controller
        self._record = start.record
        self._recording_policy = start.recording_policy
        self._recordings = recordings  # engine.recorders.Recordings: opens this session's, if recorded
        self._recording: Any = None  # engine.recorder.Recording, once opened
        self._supervisor = supervisor
        self._store = store
        self._clock = clock
        self._settings = settings
        self._state = SessionState.STARTING
        self._endpoint: Any = None
        self._participants: dict[str, _Participant] = {}
        # per user id: the times of their latest joins (policy.check_join_rate)
        self._joins: dict[str, collections.deque[float]] = {}
        self._controller_pid: str | None = None
        self._pids = itertools.count(1)
        self._started_at = clock.now()
        self._deadline: float | None = None
        self._deadline_timer: Timer | None = None
        self._grace_until: float | None = None
        self._grace_generation = 0
        self._grace_timer: Timer | None = None
        self.inputs_forwarded = 0
        self.inputs_refused = 0
        self._remote_clipboard: RemoteClipboard | None = None  # the endpoint's, for the controller

    # --- dispatch ---------------------------------------------------------------------------

    def on_receive(self, message: Any) -> None:
        if self._state is SessionState.ENDED:
            self._refuse_late(message)
            return
        match message:
            case Input():
                self._on_input(message)
            case StartSession():
                self._open(message)
            case Join():
                self._on_join(message)
            case Leave(participant_id=pid):
                self._on_leave(pid)
            case Disconnected(participant_id=pid):
                self._on_disconnected(pid)
            case ParticipantStalled(participant_id=pid, seconds=seconds):
                self._on_stalled(pid, seconds)
            case Resize():
                self._on_resize(message)
            case Say():
                self._on_say(message)
            case Point():
                self._on_point(message)
            case Terminate():
                self._on_terminate(message)
            case Eject():
                self._on_eject(message)
            case TransferControl():
                self._on_transfer(message)
            case Extend():
                self._on_extend(message)
            case Expire(deadline=deadline):
                if deadline == self._deadline:
                    self._audit("expire", deadline=deadline)
                    self._end(EndReason.EXPIRED)
            case GraceElapsed(generation=generation):
                if generation == self._grace_generation and self._state is SessionState.DISCONNECTED:
                    self._end(EndReason.ABANDONED, detail="the controller did not come back in time")
            case EndpointReady():
                if self._state is SessionState.STARTING:
                    self._set_state(SessionState.ACTIVE)
            case EndpointRetrying(attempt=attempt, delay=delay, detail=detail):
                self._metrics.endpoint_retries.labels(self._endpoint_spec.protocol.value).inc()
                self._audit("endpoint_retry", attempt=attempt, delay=delay, error=detail)
                self._broadcast(message)  # everyone sees "reconnecting", not a frozen screen
            case EndpointFailed(detail=detail):
                self._metrics.endpoint_failures.labels(self._endpoint_spec.protocol.value).inc()
                self._audit("endpoint_failure", error=detail)
                self._end(EndReason.ENDPOINT_FAILED, detail=detail)
            case EndpointFinished(detail=detail):
                self._end(EndReason.ENDPOINT_CLOSED, detail=detail)
            case RemoteClipboard():
                self._on_remote_clipboard(message)
            case RecordingFailed():
                self._on_recording_failed(message)
            case ChildFailed():
                self._on_child_failed(message)
            case SetJointSession(enabled=enabled):
                self._endpoint_spec = replace(self._endpoint_spec, joint_session=enabled)
                self._publish()
            case Describe(reply_to=reply_to):
                reply(reply_to, self._summary())
            case Shutdown():
                self._end(EndReason.ENGINE_STOPPED)
            case _:
                log.warning("session %s ignored %r", self._id, type(message).__name__)

    # --- lifecycle --------------------------------------------------------------------------

    def _open(self, start: StartSession) -> None:
        """The first message: children start here, not in on_start, so that their failure
        reaches on_failure (pykka skips it for an exception in on_start)."""
        self._store.tell(AuditSessionStarted(
            self._id, start.endpoint.id, start.endpoint.name, start.endpoint.protocol.value,
            start.controller.id, start.controller.name, self._started_at, start.record))
        self._endpoint = EndpointActor.start(
            self.actor_ref, self._id, start.connection,
            screen_for(start.endpoint.protocol, start.cols, start.rows), self._clock,
            self._settings.endpoint_retries, self._settings.endpoint_backoff_seconds,
            self._settings.endpoint_retry_window_seconds, self._settings.stall_seconds,
            self._settings.resync_interval_seconds)
        if start.record and self._recordings is not None:
            self._start_recording(start)  # a terminal as asciicast, a desktop as its RFB stream
        member = self._add(start.controller, Role.CONTROLLER, start.sink)
        self._controller_pid = member.participant_id
        send(self._endpoint, OpenEndpoint(start.cols, start.rows))
        if start.deadline is not None:
            self._set_deadline(start.deadline)
        reply(start.reply_to, self._joined(member))
        self._publish()

    def _start_recording(self, start: StartSession) -> None:
        """Rule 10: from the first byte. Subscribed before the endpoint opens (so before any
        frame) and before the controller; its file is created by a writer thread, whose
        failure comes back as `RecordingFailed` like any other."""
        e, c = start.endpoint, start.controller
        meta = RecordingMeta(self._id, e.id, e.name, e.protocol.value, c.id, c.name, self._started_at,
                             start.cols, start.rows)
        ref = self.actor_ref
        self._recording = self._recordings.open(meta, self._recording_policy, lambda failed: send(ref, failed))
        send(self._endpoint, Subscribe(RECORDER_ID, self._recording, recorder=True))

    def _on_recording_failed(self, failed: RecordingFailed) -> None:
        """Audited; then the profile's policy: end the session (fail closed, the default), or
        go on (a recording that fell behind goes on from a keyframe; one that cannot write stops)."""
        self._audit("recording_failed", reason=failed.reason, detail=failed.detail,
                    policy=self._recording_policy.value)
        if self._recording_policy is RecordingPolicy.END_SESSION:
            self._end(EndReason.RECORDING_FAILED, detail=f"the session must be recorded, and its recording "
                                                         f"failed ({failed.reason})")

    def _end(self, reason: EndReason, by: User | None = None, detail: str = "") -> None:
        """Idempotent: only the first end counts."""
        if self._state is SessionState.ENDED:
            return
        self._state = policy.transition(self._state, SessionState.ENDED)
        self._metrics.sessions_ended.labels(self._endpoint_spec.protocol.value, reason.value).inc()
        ended_at = self._clock.now()
        if self._recording is not None:
            # its end marker has the session_ended row's time; the endpoint closes it after its last frame
            self._recording.ending(reason.value, by.name if by else None, ended_at)
            if not send(self._endpoint, Unsubscribe(RECORDER_ID)):
                self._recording.close()
        for timer in (self._deadline_timer, self._grace_timer):
            if timer is not None:
                timer.cancel()
        final = SessionEnded(reason, by, detail)
        for participant in self._participants.values():
            send(participant.ref, final)
            _stop(participant.ref)
        self._participants.clear()
        _stop(self._endpoint)
        self._store.tell(AuditSessionEnded(self._id, ended_at, reason.value, by.name if by else None))
        send(self._supervisor, SessionFinished(self._id, reason, by))
        self.stop()

    def _refuse_late(self, message: Any) -> None:
        reply_to = getattr(message, "reply_to", None)
        if reply_to is not None and not isinstance(message, Describe):
            reply(reply_to, Refused(Reason.SESSION_ENDED))

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        children = tuple(p.ref for p in self._participants.values())
        if self._endpoint is not None:
            children += (self._endpoint,)
        send(self._supervisor, ChildFailed("session", self._id, describe_failure(exception_value), children))

    # --- membership -------------------------------------------------------------------------

    def _on_join(self, join: Join) -> None:
        view = self._view()
        refused = policy.check_join(view, join.user, join.has_access)
        now = self._clock.now()
        limit = self._settings.max_joins_per_user
        joins = self._joins.setdefault(join.user.id, collections.deque(maxlen=limit))
        if refused is None:
            refused = policy.check_join_rate(joins, now, limit, self._settings.joins_window_seconds)
        if refused is not None:
            self._audit("join_refused", join.user, reason=refused.reason.value)
            reply(join.reply_to, refused)
            return
        joins.append(now)
        returning = policy.is_controller_return(view, join.user)
        member = self._add(join.user, Role.CONTROLLER if returning else Role.VIEWER, join.sink)
        if returning:
            self._controller_pid = member.participant_id
            self._grace_generation += 1
            self._grace_until = None
            if self._grace_timer is not None:
                self._grace_timer.cancel()
            self._audit("reconnect", join.user, participant=member.participant_id)
            self._set_state(SessionState.ACTIVE)
        else:
            self._audit("join", join.user, participant=member.participant_id, role=member.role.value)
        self._broadcast(ParticipantJoined(member), exclude=member.participant_id)
        reply(join.reply_to, self._joined(member, rejoined=returning))
        if returning and self._remote_clipboard is not None:
            send(self._participants[member.participant_id].ref, self._remote_clipboard)
        self._publish()

    def _add(self, user: User, role: Role, sink: Any) -> Member:
        member = Member(f"{self._id[:8]}-{next(self._pids)}", user, role)
        ref = ParticipantActor.start(self.actor_ref, member, sink)
        self._participants[member.participant_id] = _Participant(member, ref)
        send(self._endpoint, Subscribe(member.participant_id, sink))
        return member

    def _remove(self, pid: str, reason: str, by: User | None = None) -> Member | None:
        participant = self._participants.pop(pid, None)
        if participant is None:
            return None
        send(self._endpoint, Unsubscribe(pid))
        _stop(participant.ref)
        if pid == self._controller_pid:
            self._controller_pid = None
        self._metrics.participants_removed.labels(reason).inc()
        self._broadcast(ParticipantLeft(participant.member, reason, by))
        return participant.member

    def _on_leave(self, pid: str) -> None:
        if pid == self._controller_pid:
            member = self._participants[pid].member
            self._audit("leave", member.user, participant=pid, role=Role.CONTROLLER.value)
            self._end(EndReason.CONTROLLER_LEFT, by=member.user)
            return
        member = self._remove(pid, "left")
        if member is not None:
            self._audit("leave", member.user, participant=pid, role=member.role.value)
            self._publish()

    def _on_disconnected(self, pid: str) -> None:
        is_controller = pid == self._controller_pid
        member = self._remove(pid, "disconnected")
        if member is None:
            return
        self._audit("disconnect", member.user, participant=pid, role=member.role.value)
        if is_controller:
            self._controller_left_unexpectedly()
        self._publish()

    def _on_stalled(self, pid: str, seconds: float) -> None:
        """A participant a whole queue behind whose client has not come back for its resync
        within `stall_seconds` (a frozen tab, a suspended laptop, a client that stopped
        reading): disconnected, as if its connection had dropped; a controller may come back
        within the grace period (rule 8)."""
        is_controller = pid == self._controller_pid
        member = self._remove(pid, "stalled")
        if member is None:
            return
        self._audit("participant_stalled", member.user, participant=pid, role=member.role.value,
                    seconds=round(seconds, 1))
        if is_controller:
            self._controller_left_unexpectedly()
        self._publish()

    def _controller_left_unexpectedly(self) -> None:
        """Rule 8: the session waits a grace period for the controller, viewers stay."""
        self._grace_generation += 1
        generation = self._grace_generation
        self._grace_until = self._clock.now() + self._settings.grace_seconds
        ref = self.actor_ref
        self._grace_timer = self._clock.call_at(self._grace_until, lambda: send(ref, GraceElapsed(generation)))
        self._set_state(SessionState.DISCONNECTED)

    def _on_eject(self, eject: Eject) -> None:
        by_role = self._role_of_user(eject.by)
        target = self._participants.get(eject.participant_id)
        refused = policy.check_eject(eject.by, by_role, target.member.role if target else None)
        # the target (participant, user) and the sender (by_participant, by_user; the row's actor)
        parties = {"participant": eject.participant_id, "user": target.member.user.name if target else None,
                   "by_participant": eject.by_participant, "by_user": eject.by.name}
        if refused is not None:
            self._audit("eject_refused", eject.by, **parties, reason=refused.reason.value)
            reply(eject.reply_to, refused)
            return
        send(target.ref, Ejected(eject.by, eject.reason))
        self._remove(eject.participant_id, "ejected", eject.by)
        self._audit("eject", eject.by, **parties, reason=eject.reason)
        reply(eject.reply_to, Accepted())
        self._publish()

    def _on_child_failed(self, failed: ChildFailed) -> None:
        if failed.kind == "endpoint":
            self._metrics.endpoint_failures.labels(self._endpoint_spec.protocol.value).inc()
            self._audit("endpoint_failure", error=failed.detail)
            self._end(EndReason.ENDPOINT_FAILED, detail=failed.detail)
            return
        was_controller = failed.child_id == self._controller_pid
        # Stopped even if it failed itself (stopping an ended actor does nothing): a failure
        # that the endpoint reports (the participant's sink broke) leaves the actor running.
        member = self._remove(failed.child_id, "failed")
        if member is None:
            return
        self._audit("participant_failed", member.user, participant=failed.child_id, error=failed.detail)
        if was_controller:
            self._controller_left_unexpectedly()
        self._publish()

    # --- input and control ------------------------------------------------------------------

    def _on_input(self, message: Input) -> None:
        participant = self._participants.get(message.participant_id)
        refused = policy.check_input(participant.member.role if participant else None)
        if refused is None:
            self.inputs_forwarded += 1
            send(self._endpoint, message)
            if self._recording is not None and self._recordings.settings.record_input and not message.secret:
                self._recording.input(message.data)
            return
        self.inputs_refused += 1
        self._audit("input_refused", participant.member.user if participant else None,
                    participant=message.participant_id, reason=refused.reason.value, size=len(message.data))
        if participant is not None:
            send(participant.ref, InputRefused(refused.reason))

    def _on_resize(self, message: Resize) -> None:
        participant = self._participants.get(message.participant_id)
        refused = policy.check_resize(participant.member.role if participant else None)
        if refused is None:
            send(self._endpoint, message)
            # the viewers' terminals follow the controller's size, wherever they are served
            self._broadcast(Resized(message.cols, message.rows), exclude=message.participant_id)
        elif participant is not None:
            send(participant.ref, InputRefused(refused.reason))

    def _on_say(self, say: Say) -> None:
        """Chat: audited with its text (a chat is part of what happened in the session), then
        told to everyone, the sender included. Length and rate were checked where it arrived."""
        participant = self._participants.get(say.participant_id)
        if participant is None or len(say.text) > policy.CHAT_MAX_CHARS:
            return  # gone meanwhile, or a sender that skipped the checks: nothing to tell
        member = participant.member
        now = self._clock.now()
        self._audit("chat", member.user, participant=member.participant_id, role=member.role.value, text=say.text)
        self._broadcast(ChatPosted(member, say.text, now))

    def _on_point(self, point: Point) -> None:
        """A pointer is shown to everyone and reaches no endpoint; not audited (it says nothing)."""
        participant = self._participants.get(point.participant_id)
        if participant is not None:
            self._broadcast(Pointed(participant.member, point.x, point.y))

    def _on_remote_clipboard(self, clipboard: RemoteClipboard) -> None:
        """The endpoint's clipboard: to the controller only (a viewer never has it), kept for a
        controller that comes back. Not audited here: what the gateway gives the controller's
        page, when its profile allows clipboard download, is audited there (with its size)."""
        self._remote_clipboard = clipboard
        controller = self._participants.get(self._controller_pid) if self._controller_pid else None
        if controller is not None:
            send(controller.ref, clipboard)

    def _on_terminate(self, terminate: Terminate) -> None:
        refused = policy.check_terminate(terminate.by)
        if refused is not None:
            self._audit("terminate_refused", terminate.by, reason=refused.reason.value)
            reply(terminate.reply_to, refused)
            return
        self._audit("terminate", terminate.by)
        reply(terminate.reply_to, Accepted())
        self._end(EndReason.TERMINATED, by=terminate.by)

    def _on_transfer(self, transfer: TransferControl) -> None:
        refused = policy.check_transfer()
        participant = self._participants.get(transfer.participant_id)
        self._audit("transfer_refused", participant.member.user if participant else None,
                    participant=transfer.participant_id, to=transfer.to_participant_id,
                    reason=refused.reason.value)
        reply(transfer.reply_to, refused)

    def _on_extend(self, extend: Extend) -> None:
        refused = policy.check_extend(self._view(), extend.by, extend.until, self._clock.now())
        if refused is not None:
            self._audit("extend_refused", extend.by, reason=refused.reason.value, until=extend.until)
            reply(extend.reply_to, refused)
            return
        self._audit("extend", extend.by, deadline=self._deadline, until=extend.until)
        self._set_deadline(extend.until)
        self._broadcast(StateChanged(self._state, self._deadline, self._grace_until))
        reply(extend.reply_to, Accepted())
        self._publish()

    def _set_deadline(self, deadline: float) -> None:
        """Rule 7. The old timer may still fire: its Expire names the old deadline and is ignored."""
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        self._deadline = deadline
        ref = self.actor_ref
        self._deadline_timer = self._clock.call_at(deadline, lambda: send(ref, Expire(deadline)))

    # --- helpers ----------------------------------------------------------------------------

    def _set_state(self, state: SessionState) -> None:
        if state is self._state:
            return
        self._state = policy.transition(self._state, state)
        self._broadcast(StateChanged(self._state, self._deadline, self._grace_until))
        self._publish()

    def _view(self) -> policy.SessionView:
        viewers = sum(1 for p in self._participants.values() if p.member.role is Role.VIEWER)
        return policy.SessionView(
            state=self._state, protocol=self._endpoint_spec.protocol,
            joint_session=self._endpoint_spec.joint_session, controller=self._controller,
            controller_connected=self._controller_pid is not None, viewer_count=viewers,
            max_viewers=self._settings.max_viewers, deadline=self._deadline)

    def _role_of_user(self, user: User) -> Role | None:
        roles = {p.member.role for p in self._participants.values() if p.member.user.id == user.id}
        if Role.CONTROLLER in roles:
            return Role.CONTROLLER
        return Role.VIEWER if roles else None

    def _members(self) -> tuple[Member, ...]:
        return tuple(p.member for p in self._participants.values())

    def _joined(self, member: Member, rejoined: bool = False) -> Joined:
        return Joined(self._id, member.participant_id, member.role, self._members(), self._state,
                      self._deadline, rejoined, self.actor_ref, recorded=self._recording is not None)

    def _summary(self) -> SessionSummary:
        return SessionSummary(self._id, self._endpoint_spec, self._controller, self._members(), self._state,
                              self._started_at, self._deadline, self._grace_until, self._record)

    def _publish(self) -> None:
        send(self._supervisor, SessionUpdated(self._summary()))

    def _broadcast(self, event: Any, exclude: str | None = None) -> None:
        for pid, participant in self._participants.items():
            if pid != exclude:
                send(participant.ref, event)

    def _audit(self, kind: str, actor: User | None = None, **detail: Any) -> None:
        event = AuditEvent.make(kind, self._clock.now(), self._id, actor, **detail)
        self._store.tell(event)
        if self._recording is not None:
            self._recording.mark(event)


def _stop(ref: Any) -> None:
    if ref is not None:
        ref.stop(block=False)


