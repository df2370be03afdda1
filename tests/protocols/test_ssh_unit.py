"""SshConnection against asyncssh's own in-process server (fast, scripted), and without one."""

from __future__ import annotations

import asyncio
import functools
import logging
import socket

import asyncssh
import pytest
import trio
import trio_asyncio

from engine.bridge import LoopBridge
from engine.connection import Credentials
from protocols.ssh import SshConnection, fingerprint
from tests.fixtures.openssh import EventRecorder

USER, PASSWORD = "alice", "s3cret-pass-phrase"


class _Server(asyncssh.SSHServer):
    def __init__(self, connections: set) -> None:
        self._connections = connections
        self._conn = None

    def connection_made(self, conn) -> None:
        self._conn = conn
        self._connections.add(conn)

    def connection_lost(self, exc) -> None:
        self._connections.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return (username, password) == (USER, PASSWORD)


async def serve_scripted(handler, host_key=None, connections=None, *, task_status=trio.TASK_STATUS_IGNORED):
    """asyncssh's server on this trio loop; each session runs `handler(process)` (asyncio).
    Started with (port, host key); `connections` (a set) holds the open connections."""
    key = host_key or asyncssh.generate_private_key("ssh-ed25519")
    connections = set() if connections is None else connections
    async with trio_asyncio.open_loop():
        acceptor = await trio_asyncio.aio_as_trio(asyncssh.create_server)(
            lambda: _Server(connections), "127.0.0.1", 0, server_host_keys=[key],
            process_factory=handler, encoding=None, line_editor=False, config=None)
        try:
            task_status.started((acceptor.get_port(), " ".join(key.export_public_key().decode().split()[:2])))
            await trio.sleep_forever()
        finally:
            acceptor.close()
            with trio.CancelScope(shield=True):
                for conn in list(connections):
                    conn.close()
                    await trio_asyncio.aio_as_trio(conn.wait_closed)()


def connection(bridge, port, known, **kwargs) -> SshConnection:
    return SshConnection(bridge, "127.0.0.1", port, Credentials(USER, password=PASSWORD), known_host_key=known,
                         **kwargs)


async def until(predicate, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.005)


# --- without a server -------------------------------------------------------------------------


def test_fingerprint_matches_openssh_form():
    key = asyncssh.generate_private_key("ssh-ed25519")
    text = key.export_public_key("openssh").decode()
    assert fingerprint(text) == key.get_fingerprint("sha256")
    assert fingerprint(text.strip() + " a comment") == key.get_fingerprint("sha256")
    for bad in ("", "ssh-ed25519", "ssh-ed25519 not*base64"):
        with pytest.raises(ValueError):
            fingerprint(bad)
    with pytest.raises(ValueError):
        SshConnection(LoopBridge(), "h", 22, Credentials("u"), known_host_key="garbage")


def test_repr_hides_credentials():
    creds = Credentials("bob", password="pw-123456", private_key="-----BEGIN KEY-----", passphrase="pp-987654")
    conn = SshConnection(LoopBridge(), "host.example", 2222, creds, known_host_key=None)
    assert repr(conn) == "SshConnection(bob@host.example:2222)"
    for secret in ("pw-123456", "BEGIN KEY", "pp-987654"):
        assert secret not in repr(conn) and secret not in repr(creds)


async def test_loop_not_running_is_reported_at_once():
    events = EventRecorder()
    SshConnection(LoopBridge(), "127.0.0.1", 22, Credentials("u"), known_host_key=None).open(events, 80, 24)
    assert events.events == [("failed", "the gateway's network loop is not running", False)]


async def test_connection_refused_is_retryable(ssh_bridge):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    events = EventRecorder()
    connection(ssh_bridge, port, None).open(events, 80, 24)
    assert await events.wait_end() == ("failed", f"connection to 127.0.0.1:{port} refused", True)


async def test_silent_server_times_out(ssh_bridge, nursery):
    async def silent(stream):
        await trio.sleep_forever()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    events = EventRecorder()
    connection(ssh_bridge, port, None, connect_timeout=0.3).open(events, 80, 24)
    assert await events.wait_end() == ("failed", f"connection to 127.0.0.1:{port} timed out after 0.3 s", True)


# --- against asyncssh's server ----------------------------------------------------------------


async def echo_then_exit(process):
    process.stdout.write(b"ready\r\n")
    process.stderr.write(b"err\xff\r\n")  # extended data is output too
    line = await process.stdin.readline()
    process.stdout.write(b"got:" + line)
    process.exit(0)


async def test_scripted_session_and_stderr(ssh_bridge, nursery):
    port, key = await nursery.start(serve_scripted, echo_then_exit)
    events = EventRecorder()
    conn = connection(ssh_bridge, port, key)
    conn.open(events, 80, 24)
    await events.wait_output(b"err\xff")
    conn.send_input(b"ping\n")
    assert await events.wait_end() == ("closed", "remote shell exited with status 0")
    assert b"got:ping\n" in events.received
    assert events.kinds() == ["opened", "closed"]


async def test_session_closed_without_status_or_by_signal(ssh_bridge, nursery):
    async def just_close(process):
        process.close()

    async def killed(process):
        process.exit_with_signal("TERM")

    for handler, detail in ((just_close, "remote shell closed the session"),
                            (killed, "remote shell ended by signal TERM")):
        port, key = await nursery.start(serve_scripted, handler)
        events = EventRecorder()
        connection(ssh_bridge, port, key).open(events, 80, 24)
        assert await events.wait_end() == ("closed", detail)


async def test_changed_key_of_another_type_is_refused_and_reported(ssh_bridge, nursery):
    rsa = asyncssh.generate_private_key("ssh-rsa", key_size=2048)
    port, rsa_text = await nursery.start(serve_scripted, echo_then_exit, rsa)
    pinned = " ".join(asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().split()[:2])
    changed: list[str] = []
    events = EventRecorder()
    connection(ssh_bridge, port, pinned, on_host_key_changed=changed.append).open(events, 80, 24)
    assert await events.wait_end() == (
        "failed", f"host key of 127.0.0.1:{port} changed (expected {fingerprint(pinned)}, got "
        f"{fingerprint(rsa_text)}); an administrator must accept the new key", False)
    assert changed == [rsa_text]


async def test_changed_key_reported_to_callback(ssh_bridge, nursery):
    port, key = await nursery.start(serve_scripted, echo_then_exit)
    pinned = " ".join(asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().split()[:2])
    changed: list[str] = []
    events = EventRecorder()
    connection(ssh_bridge, port, pinned, on_host_key_changed=changed.append).open(events, 80, 24)
    end = await events.wait_end()
    assert end[0] == "failed" and "changed" in end[1] and end[2] is False
    assert changed == [key]


async def test_first_use_callback_failure_does_not_break_the_connection(ssh_bridge, nursery, caplog):
    port, key = await nursery.start(serve_scripted, echo_then_exit)

    def broken(_key: str) -> None:
        raise RuntimeError("store unavailable")

    events = EventRecorder()
    conn = connection(ssh_bridge, port, None, on_host_key=broken)
    conn.open(events, 80, 24)
    await events.wait_output(b"ready")
    assert events.kinds() == ["opened"]
    assert any("on_host_key failed" in r.getMessage() for r in caplog.records)
    conn.close()


async def test_input_overflow_is_dropped_and_logged_never_blocking(ssh_bridge, nursery, caplog):
    async def never_reads(process):
        process.stdout.write(b"ready\r\n")
        await asyncio.sleep(3600)

    port, key = await nursery.start(serve_scripted, never_reads)
    events = EventRecorder()
    conn = connection(ssh_bridge, port, key)
    conn.open(events, 80, 24)
    await events.wait_output(b"ready")
    chunk = b"x" * 8192
    for _ in range(1000):  # 8 MB toward a server that reads nothing: the queue overflows
        conn.send_input(chunk)
    await until(lambda: any("input queue full" in r.getMessage() for r in caplog.records))
    conn.close()
    assert events.kinds() == ["opened"]


async def test_close_before_the_task_runs_reports_nothing(ssh_bridge, nursery):
    port, key = await nursery.start(serve_scripted, echo_then_exit)
    silent = EventRecorder()
    conn = connection(ssh_bridge, port, key)
    conn.open(silent, 80, 24)
    conn.close()
    conn.open(silent, 80, 24)  # after close: ignored
    # another connection opened afterwards on the same loop: once it is open, the first
    # connection's task has long run (and ended) without a report
    events = EventRecorder()
    other = connection(ssh_bridge, port, key)
    other.open(events, 80, 24)
    await events.wait_output(b"ready")
    other.close()
    assert silent.events == []


async def test_no_secret_in_any_log_record(ssh_bridge, nursery, caplog):
    caplog.set_level(logging.DEBUG)
    port, key = await nursery.start(serve_scripted, echo_then_exit)
    events = EventRecorder()
    conn = connection(ssh_bridge, port, key)
    conn.open(events, 80, 24)
    conn.send_input(b"x\n")
    await events.wait_end()
    bad = SshConnection(ssh_bridge, "127.0.0.1", port, Credentials(USER, password="wrong-" + PASSWORD),
                        known_host_key=key)
    events = EventRecorder()
    bad.open(events, 80, 24)
    assert (await events.wait_end())[1] == f"authentication failed for user {USER}"
    assert caplog.records
    for record in caplog.records:
        assert PASSWORD not in record.getMessage() and PASSWORD not in str(record.args)


async def test_a_dead_events_sink_ends_the_connection(ssh_bridge, nursery, caplog):
    """If reporting fails (the actor died without closing us), the connection closes itself
    instead of staying open with nobody to close it."""

    class DeadSink(EventRecorder):
        def output(self, data: bytes) -> None:
            raise RuntimeError("actor is dead")

    connections: set = set()
    port, key = await nursery.start(serve_scripted, echo_then_exit, None, connections)
    events = DeadSink()
    connection(ssh_bridge, port, key).open(events, 80, 24)
    await events.wait_for(lambda: events.kinds() == ["opened"])
    await until(lambda: any("closing the connection" in r.getMessage() for r in caplog.records))
    await until(lambda: not connections)  # the server saw the client go
    assert events.kinds() == ["opened"]
