"""The rules of a joint session, as pure functions of its state.

Each rule of the product lives here once. `SessionActor` builds a `SessionView` and asks;
every function answers `None` (allowed) or a `Refused` with its reason. Nothing here does I/O,
reads a clock or mutates anything, so each rule is tested by a table of cases
(tests/unit/test_policy.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from config.settings import PRODUCT_VIEWER_CAP
from engine.errors import IllegalTransition
from engine.messages import EndpointProtocol, Reason, Refused, Role, SessionState, SessionSummary, User

# Rule 3: joint sessions exist for these protocols only. The synthetic endpoint stands in for
# a terminal protocol in load tests and the demo, so it is shareable too.
SHAREABLE_PROTOCOLS = frozenset({EndpointProtocol.SSH, EndpointProtocol.VNC, EndpointProtocol.RDP, EndpointProtocol.SYNTHETIC})

# The session's state machine: starting → active ⇄ disconnected → ended.
TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    SessionState.STARTING: frozenset({SessionState.ACTIVE, SessionState.DISCONNECTED, SessionState.ENDED}),
    SessionState.ACTIVE: frozenset({SessionState.DISCONNECTED, SessionState.ENDED}),
    SessionState.DISCONNECTED: frozenset({SessionState.ACTIVE, SessionState.ENDED}),
    SessionState.ENDED: frozenset(),
}


@dataclass(frozen=True, slots=True)
class SessionView:
    """What the rules need to know about a session, and nothing else."""

    state: SessionState
    protocol: EndpointProtocol
    joint_session: bool
    controller: User
    controller_connected: bool
    viewer_count: int
    max_viewers: int
    deadline: float | None = None

    @classmethod
    def of(cls, summary: SessionSummary, max_viewers: int) -> "SessionView":
        """The view of a session as the engine's directory describes it (for the pages, which
        show what the rules would answer; the session actor decides with its own state)."""
        return cls(state=summary.state, protocol=summary.endpoint.protocol,
                   joint_session=summary.endpoint.joint_session, controller=summary.controller,
                   controller_connected=any(m.role is Role.CONTROLLER for m in summary.members),
                   viewer_count=len(summary.viewers), max_viewers=max_viewers, deadline=summary.deadline)


def transition(current: SessionState, target: SessionState) -> SessionState:
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(current, target)
    return target


def viewer_cap(setting: int) -> int:
    """Rule 2: a setting may lower the cap of ten viewers, never raise it."""
    return max(0, min(setting, PRODUCT_VIEWER_CAP))


def is_controller_return(view: SessionView, joiner: User) -> bool:
    """Rule 8: during the grace period the controller may come back, as itself."""
    return (view.state is SessionState.DISCONNECTED and not view.controller_connected
            and joiner.id == view.controller.id)


def check_join(view: SessionView, joiner: User, has_access: bool) -> Refused | None:
    """Rules 2 and 3. The controller's return is not a join and is not capped."""
    if view.state is SessionState.ENDED:
        return Refused(Reason.SESSION_ENDED)
    if is_controller_return(view, joiner):
        return None
    if not (has_access or joiner.is_admin):
        return Refused(Reason.NO_ACCESS, "you have no access to this endpoint")
    if view.protocol not in SHAREABLE_PROTOCOLS:
        return Refused(Reason.PROTOCOL_NOT_SHAREABLE,
                       f"joint sessions are not available for {view.protocol.value}")
    if not view.joint_session:
        return Refused(Reason.JOINT_SESSION_DISABLED, "joint sessions are turned off for this endpoint")
    cap = viewer_cap(view.max_viewers)
    if view.viewer_count >= cap:
        return Refused(Reason.VIEWER_CAP, f"this session already has {cap} viewers")
    return None


def check_join_rate(earlier: Sequence[float], now: float, limit: int, window: float) -> Refused | None:
    """A user may join (or come back to) one session at most `limit` times within `window`
    seconds: a client that reconnects in a loop is refused, instead of costing a participant
    and its audit rows each time. `earlier`: the times of this user's earlier joins of this
    session, oldest first."""
    inside = [at for at in earlier if at > now - window]
    if len(inside) < limit:
        return None
    wait = max(1, math.ceil(inside[-limit] + window - now))
    return Refused(Reason.TOO_MANY_JOINS, f"you joined this session {len(inside)} times in the last "
                                          f"{window:g} s; try again in {wait} s")


CHAT_MAX_CHARS = 500  # a chat message: a short line, shown to everyone and kept in the audit log
CHAT_LIMIT, CHAT_WINDOW = 5, 10.0  # chat messages per participant within this many seconds
POINT_LIMIT, POINT_WINDOW = 5, 2.0  # pointers per participant within this many seconds


def _check_rate(earlier: Sequence[float], now: float, limit: int, window: float, what: str) -> Refused | None:
    inside = [at for at in earlier if at > now - window]
    if len(inside) < limit:
        return None
    wait = max(1, math.ceil(inside[-limit] + window - now))
    return Refused(Reason.TOO_MANY_MESSAGES, f"at most {limit} {what} in {window:g} s; try again in {wait} s")


def check_chat(text: str, earlier: Sequence[float], now: float) -> Refused | None:
    """A chat message: not empty, at most CHAT_MAX_CHARS, at most CHAT_LIMIT per CHAT_WINDOW
    seconds from one participant (`earlier`: the times of its accepted messages, oldest first)."""
    if not text.strip():
        return Refused(Reason.MALFORMED, "an empty chat message")
    if len(text) > CHAT_MAX_CHARS:
        return Refused(Reason.TOO_LARGE, f"a chat message has at most {CHAT_MAX_CHARS} characters")
    return _check_rate(earlier, now, CHAT_LIMIT, CHAT_WINDOW, "chat messages")


def check_point(earlier: Sequence[float], now: float) -> Refused | None:
    """A pointer: at most POINT_LIMIT per POINT_WINDOW seconds from one participant."""
    return _check_rate(earlier, now, POINT_LIMIT, POINT_WINDOW, "pointers")


def check_input(role: Role | None) -> Refused | None:
    """Rule 1: only the controller's input reaches the endpoint."""
    if role is None:
        return Refused(Reason.NOT_A_PARTICIPANT)
    if role is not Role.CONTROLLER:
        return Refused(Reason.NOT_CONTROLLER, "viewers are read-only")
    return None


# The terminal size follows the controller's window; a viewer's never changes it.
check_resize = check_input


def check_terminate(by: User) -> Refused | None:
    """Rule 5: an administrator may terminate any session; nobody else may."""
    if not by.is_admin:
        return Refused(Reason.NOT_ADMINISTRATOR, "only an administrator may terminate a session")
    return None


def check_eject(by: User, by_role: Role | None, target_role: Role | None) -> Refused | None:
    """The controller or an administrator may eject one viewer. The controller is never
    ejected (that would be a transfer of control): an administrator terminates instead."""
    if target_role is None:
        return Refused(Reason.NOT_A_PARTICIPANT, "no such participant in this session")
    if target_role is Role.CONTROLLER:
        return Refused(Reason.NOT_PERMITTED, "the controller cannot be ejected; terminate the session instead")
    if by.is_admin or by_role is Role.CONTROLLER:
        return None
    return Refused(Reason.NOT_PERMITTED, "only the controller or an administrator may eject a viewer")


def check_transfer() -> Refused:
    """Rule 6: control is never transferred inside a session."""
    return Refused(Reason.CONTROL_NOT_TRANSFERABLE,
                   "control cannot be transferred: end this session and start a new one")


def check_extend(view: SessionView, by: User, until: float, now: float) -> Refused | None:
    """Rule 7: a deadline may be moved by an administrator, or for the controller once its
    extension is approved (the approval is checked before the Extend is sent)."""
    if not (by.is_admin or by.id == view.controller.id):
        return Refused(Reason.NOT_PERMITTED, "only the controller or an administrator may extend")
    if view.state is SessionState.ENDED:
        return Refused(Reason.SESSION_ENDED)
    if view.deadline is None:
        return Refused(Reason.NO_DEADLINE, "this session has no deadline to extend")
    if until <= now:
        return Refused(Reason.DEADLINE_IN_PAST, "the new deadline has already passed")
    return None
