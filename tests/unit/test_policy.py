"""Every rule of engine/policy.py, as tables of cases."""

from dataclasses import replace

import pytest

from engine import policy
from engine.errors import IllegalTransition
from engine.messages import EndpointProtocol, Reason, Role, SessionState as S, User

ALICE = User("alice", "Alice")
BOB = User("bob", "Bob")
ADMIN = User("root", "Root", is_admin=True)

VIEW = policy.SessionView(state=S.ACTIVE, protocol=EndpointProtocol.SSH, joint_session=True, controller=ALICE,
                          controller_connected=True, viewer_count=0, max_viewers=10)


def reason(refused):
    return None if refused is None else refused.reason


@pytest.mark.parametrize("change, joiner, has_access, expected", [
    ({}, BOB, True, None),
    ({"viewer_count": 9}, BOB, True, None),
    ({"viewer_count": 10}, BOB, True, Reason.VIEWER_CAP),
    ({"viewer_count": 3, "max_viewers": 3}, BOB, True, Reason.VIEWER_CAP),
    ({"viewer_count": 10, "max_viewers": 50}, BOB, True, Reason.VIEWER_CAP),  # a setting never raises the cap
    ({"joint_session": False}, BOB, True, Reason.JOINT_SESSION_DISABLED),
    ({"joint_session": False}, ADMIN, True, Reason.JOINT_SESSION_DISABLED),
    ({"protocol": EndpointProtocol.TELNET}, BOB, True, Reason.PROTOCOL_NOT_SHAREABLE),
    ({"protocol": EndpointProtocol.VNC}, BOB, True, None),
    ({"protocol": EndpointProtocol.RDP}, BOB, True, None),
    ({}, BOB, False, Reason.NO_ACCESS),
    ({}, ADMIN, False, None),  # administrators watch every session
    ({"state": S.ENDED}, BOB, True, Reason.SESSION_ENDED),
    ({"state": S.STARTING}, BOB, True, None),
    ({"state": S.DISCONNECTED, "controller_connected": False}, BOB, True, None),
    # the controller's return during the grace period is not a join: never capped
    ({"state": S.DISCONNECTED, "controller_connected": False, "viewer_count": 10}, ALICE, True, None),
    ({"state": S.DISCONNECTED, "controller_connected": False, "joint_session": False}, ALICE, True, None),
    # while connected, the controller's own second tab is an ordinary viewer: capped
    ({"viewer_count": 10}, ALICE, True, Reason.VIEWER_CAP),
])
def test_join(change, joiner, has_access, expected):
    assert reason(policy.check_join(replace(VIEW, **change), joiner, has_access)) == expected


def test_join_refusal_says_why():
    refused = policy.check_join(replace(VIEW, viewer_count=10), BOB, True)
    assert "10 viewers" in refused.detail


@pytest.mark.parametrize("view, joiner, expected", [
    (replace(VIEW, state=S.DISCONNECTED, controller_connected=False), ALICE, True),
    (replace(VIEW, state=S.DISCONNECTED, controller_connected=False), BOB, False),
    (VIEW, ALICE, False),
])
def test_controller_return(view, joiner, expected):
    assert policy.is_controller_return(view, joiner) is expected


@pytest.mark.parametrize("role, expected", [
    (Role.CONTROLLER, None), (Role.VIEWER, Reason.NOT_CONTROLLER), (None, Reason.NOT_A_PARTICIPANT)])
def test_only_the_controller_types_and_resizes(role, expected):
    assert reason(policy.check_input(role)) == expected
    assert reason(policy.check_resize(role)) == expected


@pytest.mark.parametrize("by, expected", [(ADMIN, None), (ALICE, Reason.NOT_ADMINISTRATOR), (BOB, Reason.NOT_ADMINISTRATOR)])
def test_terminate_needs_an_administrator(by, expected):
    assert reason(policy.check_terminate(by)) == expected


@pytest.mark.parametrize("by, by_role, target_role, expected", [
    (ALICE, Role.CONTROLLER, Role.VIEWER, None),
    (ADMIN, None, Role.VIEWER, None),
    (ADMIN, Role.VIEWER, Role.VIEWER, None),
    (BOB, Role.VIEWER, Role.VIEWER, Reason.NOT_PERMITTED),
    (BOB, None, Role.VIEWER, Reason.NOT_PERMITTED),
    (ADMIN, None, Role.CONTROLLER, Reason.NOT_PERMITTED),
    (ALICE, Role.CONTROLLER, None, Reason.NOT_A_PARTICIPANT),
])
def test_eject(by, by_role, target_role, expected):
    assert reason(policy.check_eject(by, by_role, target_role)) == expected


def test_control_is_never_transferred():
    assert policy.check_transfer().reason is Reason.CONTROL_NOT_TRANSFERABLE


@pytest.mark.parametrize("change, by, until, expected", [
    ({"deadline": 100.0}, ALICE, 200.0, None),
    ({"deadline": 100.0}, ADMIN, 200.0, None),
    ({"deadline": 100.0}, BOB, 200.0, Reason.NOT_PERMITTED),
    ({"deadline": None}, ALICE, 200.0, Reason.NO_DEADLINE),
    ({"deadline": 100.0}, ALICE, 40.0, Reason.DEADLINE_IN_PAST),
    ({"deadline": 100.0, "state": S.ENDED}, ALICE, 200.0, Reason.SESSION_ENDED),
])
def test_extend(change, by, until, expected):
    assert reason(policy.check_extend(replace(VIEW, **change), by, until, now=50.0)) == expected


@pytest.mark.parametrize("current, target, allowed", [
    (S.STARTING, S.ACTIVE, True), (S.ACTIVE, S.DISCONNECTED, True), (S.DISCONNECTED, S.ACTIVE, True),
    (S.ACTIVE, S.ENDED, True), (S.DISCONNECTED, S.ENDED, True), (S.STARTING, S.ENDED, True),
    (S.ENDED, S.ACTIVE, False), (S.ENDED, S.ENDED, False), (S.ACTIVE, S.STARTING, False),
])
def test_state_machine(current, target, allowed):
    if allowed:
        assert policy.transition(current, target) is target
    else:
        with pytest.raises(IllegalTransition):
            policy.transition(current, target)


@pytest.mark.parametrize("setting, cap", [(10, 10), (3, 3), (0, 0), (11, 10), (1000, 10)])
def test_viewer_cap_can_only_be_lowered(setting, cap):
    assert policy.viewer_cap(setting) == cap


@pytest.mark.parametrize("earlier, now, expected", [
    ([], 100.0, None),
    ([10.0, 20.0], 100.0, None),  # under the limit of 3
    ([50.0, 60.0, 70.0], 100.0, Reason.TOO_MANY_JOINS),  # 3 within the last 60 s
    ([30.0, 60.0, 70.0], 100.0, None),  # the oldest left the window (100 - 60 = 40 > 30)
    ([40.0, 60.0, 70.0], 100.0, None),  # exactly a window ago: out
    ([40.5, 60.0, 70.0], 100.0, Reason.TOO_MANY_JOINS),
    ([0.0, 1.0, 2.0, 50.0, 60.0, 70.0], 100.0, Reason.TOO_MANY_JOINS),
])
def test_join_rate(earlier, now, expected):
    assert reason(policy.check_join_rate(earlier, now, 3, 60.0)) == expected


def test_join_rate_refusal_says_when_to_come_back():
    refused = policy.check_join_rate([50.0, 60.0, 70.0], 100.0, 3, 60.0)
    assert refused.detail == "you joined this session 3 times in the last 60 s; try again in 10 s"


def test_chat_is_short_not_empty_and_bounded_in_rate():
    assert policy.check_chat("hello", [], 100.0) is None
    assert policy.check_chat(" \t", [], 100.0).reason is Reason.MALFORMED
    assert policy.check_chat("x" * (policy.CHAT_MAX_CHARS + 1), [], 100.0).reason is Reason.TOO_LARGE
    earlier = [100.0 - policy.CHAT_WINDOW + 1 + i * 0.1 for i in range(policy.CHAT_LIMIT)]
    refused = policy.check_chat("hello", earlier, 100.0)
    assert refused.reason is Reason.TOO_MANY_MESSAGES and "try again in 1 s" in refused.detail
    assert policy.check_chat("hello", earlier, 101.0) is None  # the oldest left the window


def test_pointers_are_bounded_in_rate():
    earlier = [10.0] * policy.POINT_LIMIT
    assert policy.check_point(earlier, 10.5).reason is Reason.TOO_MANY_MESSAGES
    assert policy.check_point(earlier, 10.0 + policy.POINT_WINDOW) is None
