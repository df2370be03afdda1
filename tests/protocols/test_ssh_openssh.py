"""SshConnection against the real OpenSSH sshd (tests/fixtures/openssh.py)."""

from __future__ import annotations

import importlib.util
import logging
import threading
from typing import Any

import pytest
import trio
import trio.testing

from engine.connection import Credentials, EndpointEvents
from engine.messages import EndpointOpened, Frame
from protocols.ssh import OUTPUT_CHUNK, SshConnection, fingerprint
from tests.fixtures.openssh import EventRecorder

pytestmark = pytest.mark.openssh


def connect(bridge, server, *, password=True, key=False, known_host_key="pinned", **kwargs):
    creds = Credentials(
        server.username,
        password=server.password if password is True else (password or None),
        private_key=server.private_key if key else None,
    )
    if known_host_key == "pinned":
        known_host_key = server.host_key
    return SshConnection(bridge, server.host, server.port, creds, known_host_key=known_host_key, **kwargs)


async def open_shell(bridge, server, cols=80, rows=24, **kwargs):
    events = EventRecorder()
    conn = connect(bridge, server, **kwargs)
    conn.open(events, cols, rows)
    await events.wait_for(lambda: events.kinds() != [])
    assert events.kinds() == ["opened"], events.events
    return conn, events


async def test_command_output_arrives(ssh_bridge, openssh):
    conn, events = await open_shell(ssh_bridge, openssh)
    conn.send_input(b"echo hello-$((6*7))\n")
    await events.wait_output(b"hello-42")
    conn.close()


async def test_key_auth(ssh_bridge, openssh):
    conn, events = await open_shell(ssh_bridge, openssh, password=None, key=True)
    conn.send_input(b"echo key-$((40+2)); whoami\n")
    await events.wait_output(b"key-42")
    await events.wait_output(openssh.username.encode())
    conn.close()


async def test_output_is_decrypted_with_aes_gcm(ssh_bridge, openssh, caplog):
    # asyncssh's default first choice, chacha20-poly1305, costs the loop about 100 us a packet
    # (docs/ssh.md): the gateway prefers AES-GCM, which OpenSSH offers too
    caplog.set_level(logging.INFO, logger="protocols.ssh")
    conn, events = await open_shell(ssh_bridge, openssh)
    conn.send_input(b"echo gcm-$((6*7))\n")
    await events.wait_output(b"gcm-42")
    conn.close()
    opened = [r.getMessage() for r in caplog.records if "shell open" in r.getMessage()]
    assert opened and "cipher aes256-gcm@openssh.com" in opened[0], opened


async def open_with_key(bridge, server, private_key, passphrase):
    creds = Credentials(server.username, private_key=private_key, passphrase=passphrase)
    events = EventRecorder()
    conn = SshConnection(bridge, server.host, server.port, creds, known_host_key=server.host_key)
    conn.open(events, 80, 24)
    await events.wait_for(lambda: events.kinds() != [])
    conn.close()
    return events


async def test_encrypted_pem_key_with_passphrase(ssh_bridge, openssh):
    account = openssh.account
    events = await open_with_key(ssh_bridge, openssh, account.encrypted_private_key, account.passphrase)
    assert events.kinds() == ["opened"], events.events


async def test_encrypted_key_errors_are_final_and_clear(ssh_bridge, openssh):
    account = openssh.account
    events = await open_with_key(ssh_bridge, openssh, account.encrypted_private_key, "not-it")
    assert events.ended == ("failed", "the private key could not be read (wrong passphrase or not a "
                            "supported private key)", False)
    events = await open_with_key(ssh_bridge, openssh, account.encrypted_private_key, None)
    assert events.ended == ("failed", "the private key is encrypted and no passphrase was given", False)


async def test_encrypted_openssh_format_key(ssh_bridge, openssh):
    account = openssh.account
    events = await open_with_key(ssh_bridge, openssh, account.openssh_encrypted_private_key, account.passphrase)
    if importlib.util.find_spec("bcrypt") is None:
        assert events.ended == ("failed", "the private key is in OpenSSH's encrypted format, which needs "
                                "the 'bcrypt' package on the gateway", False)
    else:
        assert events.kinds() == ["opened"], events.events


async def test_wrong_password_is_final_and_never_logged(ssh_bridge, openssh, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "Wr0ng-" + openssh.password[::-1]
    events = EventRecorder()
    conn = connect(ssh_bridge, openssh, password=wrong)
    conn.open(events, 80, 24)
    end = await events.wait_end()
    assert end == ("failed", f"authentication failed for user {openssh.username}", False)
    for secret in (wrong, openssh.password):
        assert all(secret not in r.getMessage() and secret not in str(r.args) for r in caplog.records)
        assert all(secret not in str(e) for e in events.events)
    assert wrong not in repr(conn)
    assert caplog.records, "the failure is logged"


async def test_host_key_recorded_then_pinned(ssh_bridge, openssh):
    recorded: list[str] = []
    conn, events = await open_shell(ssh_bridge, openssh, known_host_key=None, on_host_key=recorded.append)
    assert recorded == [openssh.host_key]
    assert fingerprint(recorded[0]).startswith("SHA256:")
    conn.close()

    # the same key pinned: accepted
    conn, events = await open_shell(ssh_bridge, openssh, known_host_key=recorded[0])
    conn.close()

    # a different pinned key: refused before any credential is sent
    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDw7IM0wMXnwS8kfaY2a9i7Ebv6lHWF6Uz6J1jBl0mEv"
    events = EventRecorder()
    conn = connect(ssh_bridge, openssh, known_host_key=other, on_host_key=recorded.append)
    conn.open(events, 80, 24)
    end = await events.wait_end()
    assert end == ("failed",
                   f"host key of {openssh.host}:{openssh.port} changed (expected {fingerprint(other)}, "
                   f"got {fingerprint(openssh.host_key)}); an administrator must accept the new key",
                   False)
    assert recorded == [openssh.host_key]


async def test_resize_changes_stty_size(ssh_bridge, openssh):
    conn, events = await open_shell(ssh_bridge, openssh, cols=100, rows=30)
    conn.send_input(b"stty size\n")
    await events.wait_output(b"30 100")
    conn.resize(132, 43)
    conn.send_input(b"stty size\n")
    await events.wait_output(b"43 132")
    conn.close()


async def test_sshd_killed_mid_session_is_retryable(ssh_bridge, openssh):
    conn, events = await open_shell(ssh_bridge, openssh)
    conn.send_input(b"echo up-$((1+1))\n")
    await events.wait_output(b"up-2")
    openssh.kill()
    end = await events.wait_end()
    assert end[0] == "failed" and end[2] is True, end
    assert f"{openssh.host}:{openssh.port}" in end[1]

    # a retry of the same connection is a fresh attempt: refused now, still retryable
    retry = EventRecorder()
    conn.open(retry, 80, 24)
    assert await retry.wait_end() == ("failed", f"connection to {openssh.host}:{openssh.port} refused", True)
    conn.close()


async def test_keepalive_timeout_is_retryable(ssh_bridge, openssh):
    conn, events = await open_shell(ssh_bridge, openssh, keepalive_interval=0.2, keepalive_count_max=2)
    openssh.freeze()
    try:
        end = await events.wait_end()
    finally:
        openssh.thaw()
    assert end == ("failed", f"{openssh.host}:{openssh.port} stopped answering keepalives", True)
    conn.close()


async def test_close_is_idempotent_and_silent(ssh_bridge, openssh):
    conn, events = await open_shell(ssh_bridge, openssh)
    conn.send_input(b"while :; do echo tick-$((1+1)); done\n")  # output keeps coming until the close
    await events.wait_output(b"tick-2")
    conn.close()
    count = len(events.events)
    conn.close()
    conn.send_input(b"echo after-close\n")
    conn.resize(90, 30)
    conn.close()
    # the connection task ends (its processes go away) without reporting anything more
    with trio.fail_after(10):
        while len(openssh.pids()) > 1:
            await trio.sleep(0.02)
    assert len(events.events) == count
    assert events.ended is None


async def test_non_utf8_bytes_unchanged(ssh_bridge, openssh):
    conn, events = await open_shell(ssh_bridge, openssh)
    conn.send_input(b"printf 'A\\377\\376Z'\n")
    await events.wait_output(b"A\xff\xfeZ")
    conn.send_input(b"printf '\\303\\251\\n'\n")  # UTF-8 too, as bytes
    await events.wait_output("é".encode())
    conn.close()


async def test_shell_exit_reports_closed(ssh_bridge, openssh):
    conn, events = await open_shell(ssh_bridge, openssh)
    conn.send_input(b"exit 3\n")
    end = await events.wait_end()
    assert end == ("closed", "remote shell exited with status 3")
    conn.close()


async def test_driven_from_a_plain_thread(ssh_bridge, openssh):
    """open/send_input/resize/close come from an actor thread in the gateway."""
    events = EventRecorder()
    conn = connect(ssh_bridge, openssh)

    def actor() -> None:
        conn.open(events, 80, 24)
        conn.send_input(b"echo from-thread-$((2*21))\n")  # queued before the shell is open

    thread = threading.Thread(target=actor)
    thread.start()
    thread.join(5)
    assert not thread.is_alive()
    await events.wait_output(b"from-thread-42")
    assert events.kinds() == ["opened"]
    closer = threading.Thread(target=conn.close)
    closer.start()
    closer.join(5)
    assert not closer.is_alive()


async def test_server_side_effects(ssh_bridge, openssh):
    """Input really runs on the endpoint: a file appears in the user's home."""
    target = openssh.home / "cosession-ssh-test.txt"
    target.unlink(missing_ok=True)
    conn, events = await open_shell(ssh_bridge, openssh)
    conn.send_input(b"printf 'written\\n' > ~/cosession-ssh-test.txt && echo done-$((3*3))\n")
    await events.wait_output(b"done-9")
    assert target.read_text() == "written\n"
    target.unlink()
    conn.close()


class BehindActor:
    """An EndpointActor stand-in for `EndpointEvents`: it keeps the Frames told to it and fans
    out nothing until the test processes them, as an actor that is behind."""

    def __init__(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._changed = trio.Event()
        self.events: Any = None
        self.opened = False
        self.frames: list[Any] = []
        self.max_in_flight = 0

    def tell(self, message: Any) -> None:
        if isinstance(message, Frame):
            self.frames.append(message)
            self.max_in_flight = max(self.max_in_flight, self.events.in_flight)
        elif isinstance(message, EndpointOpened):
            self.opened = True
        self._token.run_sync_soon(self._wake)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate) -> None:
        while not predicate():
            await self._changed.wait()


async def test_output_waits_while_the_endpoint_actor_is_behind(ssh_bridge, openssh):
    bound = 128 * 1024
    actor = BehindActor()
    events = actor.events = EndpointEvents(actor, max_in_flight=bound)
    conn = connect(ssh_bridge, openssh)
    conn.open(events, 80, 24)
    received = bytearray()
    stops = 0
    command = b"head -c 3000000 /dev/zero | tr '\\0' '\\132'; echo; echo END-$((6*7))\n"  # \132: Z, not in the echo
    with trio.fail_after(60):
        await actor.wait_for(lambda: actor.opened)
        conn.send_input(command)
        while b"END-42" not in received:
            # the reader stops at the bound (it would go on to 3 MB if nothing held it back) ...
            await actor.wait_for(lambda: events.in_flight >= bound or b"END-42" in bytes(received[-8:]) + b"".join(
                f.data for f in actor.frames))
            await trio.testing.wait_all_tasks_blocked(0.05)  # let the reader go as far as it would
            stops += events.in_flight >= bound
            # ... and goes on once the actor has fanned out what it had
            frames, actor.frames = actor.frames, []
            for frame in frames:
                received += frame.data
                events.processed(len(frame.data))
    conn.close()
    assert actor.max_in_flight <= bound + 3 * OUTPUT_CHUNK
    assert received.count(b"Z") == 3_000_000  # every byte, in the end
    assert stops >= 3_000_000 // (bound + 3 * OUTPUT_CHUNK)
