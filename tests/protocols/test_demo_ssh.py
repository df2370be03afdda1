"""The demo SSH endpoint: a real shell in a real PTY, reached with SshConnection and with the
OpenSSH client."""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

import pytest
import trio

from engine.connection import Credentials
from protocols.demo_ssh import DemoSsh, serve_demo_ssh
from protocols.ssh import SshConnection
from tests.fixtures.openssh import EventRecorder

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/ptmx"), reason="needs pseudo-terminals")


@pytest.fixture
async def demo(nursery) -> DemoSsh:
    return await nursery.start(serve_demo_ssh)


def connection(bridge, demo: DemoSsh, password: str | None = None, **kwargs) -> SshConnection:
    creds = Credentials(demo.username, password=password or demo.password)
    return SshConnection(bridge, demo.host, demo.port, creds, known_host_key=demo.host_key_openssh, **kwargs)


async def open_shell(bridge, demo, cols=80, rows=24):
    events = EventRecorder()
    conn = connection(bridge, demo)
    conn.open(events, cols, rows)
    await events.wait_for(lambda: events.kinds() != [])
    assert events.kinds() == ["opened"], events.events
    return conn, events


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; only its reaping is left


async def test_repr_hides_the_password(demo):
    assert demo.password not in repr(demo)
    assert demo.username in repr(demo) and str(demo.port) in repr(demo)
    assert demo.host == "127.0.0.1" and demo.host_key_openssh.startswith("ssh-ed25519 ")


async def test_real_shell_in_a_real_pty(ssh_bridge, demo):
    conn, events = await open_shell(ssh_bridge, demo, cols=101, rows=33)
    conn.send_input(b"tty; echo term=$TERM; stty size; echo sum-$((20+22))\n")
    await events.wait_output(b"sum-42")
    text = bytes(events.received)
    assert re.search(rb"/dev/pts/\d+", text), text
    assert b"term=xterm-256color" in text
    assert b"33 101" in text

    conn.resize(120, 40)  # TIOCSWINSZ on the master: the shell sees the new size
    conn.send_input(b"stty size\n")
    await events.wait_output(b"40 120")

    conn.send_input(b"printf 'x\\377\\376y\\n'\n")  # bytes, not text, both ways
    await events.wait_output(b"x\xff\xfey")

    conn.send_input(b"exit 5\n")
    assert await events.wait_end() == ("closed", "remote shell exited with status 5")


async def test_job_control_and_ctrl_c(ssh_bridge, demo):
    """The PTY is the shell's controlling terminal: ^C interrupts the foreground job."""
    conn, events = await open_shell(ssh_bridge, demo)
    # computed markers: the terminal's echo of the typed line never matches them
    conn.send_input(b"PS1='<$((2+3))> '\n")
    await events.wait_output(b"<5> ")
    conn.send_input(b"echo started-$((1+1)); sleep 60; echo not-$((0+1))-interrupted\n")
    await events.wait_output(b"started-2")
    prompts = events.received.count(b"<5> ")
    conn.send_input(b"\x03")
    # The next line only once the shell prompts again: until it has the terminal back, what is
    # typed may be flushed with the interrupted job's input (it was, under load).
    await events.wait_for(lambda: events.received.count(b"<5> ") > prompts)
    conn.send_input(b"echo after-$((7*6))\n")
    await events.wait_output(b"after-42")
    assert b"not-1-interrupted" not in events.received
    conn.close()


async def test_wrong_password_refused(ssh_bridge, demo):
    events = EventRecorder()
    conn = connection(ssh_bridge, demo, password="not-" + demo.password)
    conn.open(events, 80, 24)
    assert await events.wait_end() == ("failed", f"authentication failed for user {demo.username}", False)


async def test_given_credentials(ssh_bridge, nursery):
    demo = await nursery.start(lambda task_status: serve_demo_ssh(
        username="alice", password="correct horse", shell="/bin/sh", task_status=task_status))
    assert (demo.username, demo.password) == ("alice", "correct horse")
    conn, events = await open_shell(ssh_bridge, demo)
    conn.send_input(b"echo shell=$SHELL\n")
    await events.wait_output(b"shell=/bin/sh")
    conn.close()


async def test_client_leaving_kills_its_shell(ssh_bridge, demo):
    conn, events = await open_shell(ssh_bridge, demo)
    conn.send_input(b"echo pid:$$:\n")
    await events.wait_for(lambda: re.search(rb"pid:(\d+):", events.received) is not None)
    shell_pid = int(re.search(rb"pid:(\d+):", events.received).group(1))
    conn.close()
    with trio.fail_after(5):
        while alive(shell_pid):
            await trio.sleep(0.01)


async def test_cancelling_kills_every_shell_process(ssh_bridge, nursery):
    scope = trio.CancelScope()
    stopped = trio.Event()

    async def run_demo(task_status):
        with scope:
            await serve_demo_ssh(task_status=task_status)
        stopped.set()

    demo = await nursery.start(run_demo)
    conn, events = await open_shell(ssh_bridge, demo)
    conn.send_input(b"sleep 300 & echo pids:$$:$!:\n")
    await events.wait_for(lambda: re.search(rb"pids:(\d+):(\d+):", events.received) is not None)
    shell_pid, job_pid = map(int, re.search(rb"pids:(\d+):(\d+):", events.received).groups())
    assert alive(shell_pid) and alive(job_pid)

    scope.cancel()
    with trio.fail_after(5):
        await stopped.wait()
    assert not alive(shell_pid)  # killed and reaped before serve_demo_ssh returned
    with trio.fail_after(5):  # killed too (SIGKILL is delivered asynchronously)
        while alive(job_pid):
            await trio.sleep(0.01)
    assert await events.wait_end() == ("closed", "remote shell ended by signal KILL")
    conn.close()


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client")
async def test_openssh_client(demo, tmp_path):
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[{demo.host}]:{demo.port} {demo.host_key_openssh}\n")
    askpass = tmp_path / "askpass.sh"
    (tmp_path / "password").write_text(demo.password)
    askpass.write_text(f"#!/bin/sh\ncat '{tmp_path / 'password'}'\n")
    askpass.chmod(stat.S_IRWXU)
    env = {**os.environ, "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"}
    with trio.fail_after(20):
        result = await trio.run_process(
            ["ssh", "-F", "/dev/null", "-tt", "-p", str(demo.port), "-l", demo.username,
             "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
             "-o", "PreferredAuthentications=password,keyboard-interactive", "-o", "BatchMode=no",
             demo.host, "tty; echo TERM=$TERM; exit 7"],
            env=env, capture_stdout=True, capture_stderr=True, check=False, stdin=b"")
    assert result.returncode == 7, result.stderr
    assert re.search(rb"/dev/pts/\d+", result.stdout), result.stdout


async def test_a_shell_that_cannot_run_is_reported(ssh_bridge, nursery):
    demo = await nursery.start(lambda task_status: serve_demo_ssh(shell="/nonexistent/shell", task_status=task_status))
    events = EventRecorder()
    connection(ssh_bridge, demo).open(events, 80, 24)
    assert await events.wait_end() == ("closed", "remote shell exited with status 127")
    assert b"cannot run /nonexistent/shell: No such file or directory" in events.received
