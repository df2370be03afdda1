"""The RDP connection's pure parts: what FreeRDP's output and exit status mean for the session,
and what it refuses before starting anything."""

from __future__ import annotations

import pytest

from engine.connection import Credentials
from protocols.freerdp import (
    AttemptFailed, FreeRdpRun, RdpOptions, ServerEnded, certificate_fingerprint, describe_exit,
)
from protocols.rdp import RdpConnection

WHERE = "win.example:3389"
FINGERPRINT = ":".join(f"{i:02x}" for i in range(32))


def run_of(*lines: str, returncode: int | None = None) -> FreeRdpRun:
    run = FreeRdpRun()
    for line in lines:
        run.note(line)
    run.returncode = returncode
    return run


def state(name: str) -> str:
    return (f"[23:15:16:685] [4907:4911] [DEBUG][com.freerdp.core.connection] - "
            f"rdp_client_transition_to_state CONNECTION_STATE_X --> CONNECTION_STATE_{name}")


def test_output_lines_tell_the_progress():
    run = FreeRdpRun()
    assert run.note("Password: " + state("NEGO")) is False  # the prompt shares the first line
    assert run.note("[23:15:16:736] [1:2] [DEBUG][com.freerdp.core.nego] - Negotiated TLS security") is False
    assert run.note(state("MCS_CONNECT")) is False
    assert run.note(state("ACTIVE")) is True
    assert (run.furthest, run.security) == ("ACTIVE", "TLS")


def test_a_fallback_to_initial_keeps_the_furthest_state():
    run = run_of(state("NEGO"), state("NLA"), state("INITIAL"), state("NEGO"), state("NLA"), state("INITIAL"))
    assert run.furthest == "NLA"


@pytest.mark.parametrize("code, detail", [
    (12, "the user logged off"),
    (5, "another connection to the RDP server took over the session"),
    (2, "an administrative tool on the RDP server logged the session off"),
    (1, "an administrative tool on the RDP server disconnected the session"),
    (3, "the RDP server disconnected the session after it was idle too long"),
    (0, "the RDP server ended the session"),
])
def test_the_servers_own_reasons_end_the_session(code, detail):
    ended = describe_exit(run_of(state("ACTIVE"), returncode=code), WHERE, "alice", was_active=True)
    assert isinstance(ended, ServerEnded) and ended.detail == detail


@pytest.mark.parametrize("code", [132, 134, 154])
def test_authentication_failures_are_final(code):
    failure = describe_exit(run_of(state("NLA"), returncode=code), WHERE, "alice", was_active=False)
    assert isinstance(failure, AttemptFailed)
    assert (failure.detail, failure.retryable) == ("authentication failed for user alice", False)


def test_a_connection_closed_during_nla_is_an_authentication_failure():
    run = run_of(state("NEGO"), state("NLA"), state("INITIAL"), returncode=147)
    failure = describe_exit(run, WHERE, "alice", was_active=False)
    assert failure.retryable is False
    assert failure.detail == ("authentication failed for user alice (win.example:3389 closed the "
                              "connection during network level authentication)")


@pytest.mark.parametrize("code, retryable, text", [
    (131, True, "connection to win.example:3389 lost"),
    (147, True, "connection to win.example:3389 lost"),
    (-9, True, "the RDP client for win.example:3389 was killed by SIGKILL"),
])
def test_losing_an_active_session_is_retryable(code, retryable, text):
    failure = describe_exit(run_of(state("ACTIVE"), returncode=code), WHERE, "alice", was_active=True)
    assert isinstance(failure, AttemptFailed)
    assert (failure.detail, failure.retryable) == (text, retryable)


@pytest.mark.parametrize("code, text", [
    (135, "the account is locked out"),
    (148, "the password has expired"),
    (151, "the account is disabled"),
    (158, "the account may not log on through RDP"),
    (7, "the RDP server denied the connection"),
])
def test_account_refusals_are_final_and_named(code, text):
    failure = describe_exit(run_of(state("NLA"), returncode=code), WHERE, "alice", was_active=False)
    assert isinstance(failure, AttemptFailed) and failure.retryable is False
    assert failure.detail == f"{text} (user alice on {WHERE})"


def test_security_negotiation_failures_name_the_servers_requirement():
    run = run_of(state("NEGO"), "[1] [2:3] [WARN][com.freerdp.core.nego] - Error: SSL_REQUIRED_BY_SERVER",
                 returncode=146)
    failure = describe_exit(run, WHERE, "", was_active=False)
    assert (failure.detail, failure.retryable) == (
        f"security negotiation with {WHERE} failed: the server requires TLS", False)


def test_a_changed_certificate_names_the_new_fingerprint():
    run = run_of(state("NEGO"), "[1] [2:3] [ERROR][com.freerdp.crypto] - The fingerprint for the host key "
                 f"sent by the remote host is {FINGERPRINT.upper()}", returncode=143)
    assert run.changed_fingerprint == FINGERPRINT
    failure = describe_exit(run, WHERE, "alice", was_active=False)
    assert failure.retryable is False
    assert FINGERPRINT in failure.detail and "administrator must accept" in failure.detail


def test_an_unexplained_failure_says_where_it_stopped():
    failure = describe_exit(run_of(state("NEGO"), state("MCS_CONNECT"), returncode=142), WHERE, "", False)
    assert (failure.detail, failure.retryable) == (
        f"the RDP connection to {WHERE} failed during mcs connect (FreeRDP status 142)", True)


def test_certificate_fingerprints_are_checked():
    assert certificate_fingerprint(FINGERPRINT.upper()) == FINGERPRINT
    for bad in ("", "ab:cd", FINGERPRINT + ":00", FINGERPRINT.replace(":", ""), "zz" + FINGERPRINT[2:]):
        with pytest.raises(ValueError):
            certificate_fingerprint(bad)


@pytest.mark.parametrize("kwargs", [
    {"width": 100}, {"height": 9000}, {"security": "kerberos"}, {"connect_timeout": 0},
])
def test_options_are_checked(kwargs):
    with pytest.raises(ValueError):
        RdpOptions(**kwargs)


@pytest.mark.parametrize("creds", [
    Credentials("alice", password="two\nlines"),
    Credentials("alice\nfull address:s:evil", password="x"),
    Credentials("alice", password="nul\0"),
    Credentials("alice", password="p" * 512),
])
def test_credentials_freerdp_cannot_read_are_refused_up_front(creds):
    with pytest.raises(ValueError) as refused:
        RdpConnection(None, "h", 3389, creds)
    assert "p" * 20 not in str(refused.value) and "two" not in str(refused.value)


def test_repr_hides_the_password():
    conn = RdpConnection(None, "h", 3389, Credentials("alice", password="sesame"),
                         known_certificate=FINGERPRINT)
    assert "sesame" not in repr(conn) and repr(conn) == "RdpConnection(alice@h:3389)"


class SentInput:
    """Stands in for the display's VNC reader: what `_pace_input` passes on."""

    def __init__(self) -> None:
        self.sent = bytearray()

    def send_input(self, data: bytes) -> None:
        self.sent += data


def paced(*chunks: bytes) -> list:
    """The client messages `_pace_input` passes on for the controller's `chunks`."""
    import trio

    from protocols import rfb
    from protocols.rdp import _Attempt, _pace_input

    reader = SentInput()

    async def main() -> None:
        attempt = _Attempt(events=None)
        for chunk in chunks:
            attempt.input.offer(chunk)
        attempt.input.send_channel.close()
        await _pace_input(attempt, reader, 1280, 800)

    trio.run(main)
    return [message for message, _ in rfb.ClientMessageReader().feed(bytes(reader.sent))]


def test_a_key_pressed_again_right_after_its_release_gets_a_pointer_nudge_first():
    """xfreerdp would take the release and the press for autorepeat and drop the release if
    they were next to each other with one X timestamp, losing the second "l" of "hello"."""
    from protocols import rfb

    def key(down: bool, char: str) -> bytes:
        return rfb.pack(rfb.KeyEvent(down, ord(char)))

    typed = key(True, "l") + key(False, "l") + key(True, "l") + key(False, "l") + key(True, "o") + key(False, "o")
    assert paced(rfb.pack(rfb.PointerEvent(0b1001, 1279, 20)), typed) == [
        rfb.PointerEvent(0b1001, 1279, 20),
        rfb.KeyEvent(True, ord("l")), rfb.KeyEvent(False, ord("l")),
        # the wheel is not scrolled again; at the right edge the nudge goes left
        rfb.PointerEvent(0b0001, 1278, 20), rfb.PointerEvent(0b0001, 1279, 20),
        rfb.KeyEvent(True, ord("l")), rfb.KeyEvent(False, ord("l")),
        rfb.KeyEvent(True, ord("o")), rfb.KeyEvent(False, ord("o")),
    ]
    # before any pointer event: where X starts the pointer, the centre
    assert paced(typed)[2:4] == [rfb.PointerEvent(0, 641, 400), rfb.PointerEvent(0, 640, 400)]
