"""`cosession serve` as a real process: first-run accounts, answering HTTP, stopping on signals."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from dashboard.services import Services

ROOT = Path(__file__).resolve().parents[2]
PASSWORD_LINE = re.compile(r"name: (\w+)\s+password: (\S+)")


class Served:
    def __init__(self, data_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("COSESSION_")}, **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cosession.cli", "serve", "--port", "0", "--data-dir", str(data_dir), *args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        self._err_thread = threading.Thread(target=lambda: self._stderr.extend(self.proc.stderr), daemon=True)
        self._err_thread.start()
        try:
            self.url = self._wait_for(re.compile(r"cosession is running: open (\S+)/$")).group(1)
        except BaseException:
            self.stop(signal.SIGKILL)
            raise

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def _wait_for(self, pattern: re.Pattern[str], timeout: float = 30.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {pattern.pattern!r} within {timeout} s: {self.lines}") from None
            if line is None:
                self.proc.wait(5)
                raise AssertionError(f"serve exited ({self.proc.returncode}): {self.lines} {self._stderr}")
            self.lines.append(line)
            if match := pattern.search(line):
                return match

    def passwords(self) -> dict[str, str]:
        self._wait_for(re.compile("Press Ctrl-C to stop"))
        return dict(m.groups() for line in self.lines if (m := PASSWORD_LINE.search(line)))

    def stop(self, signum: int = signal.SIGINT) -> tuple[int, str, str]:
        self.proc.send_signal(signum)
        try:
            code = self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        rest = []
        try:
            while (line := self._queue.get(timeout=5)) is not None:
                rest.append(line)
        except queue.Empty:
            pass
        self._err_thread.join(5)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return code, "\n".join(self.lines + rest), "".join(self._stderr)


def test_serve_first_run_answers_and_stops_cleanly(tmp_path):
    data = tmp_path / "data"
    served = Served(data, "--no-demo")
    try:
        passwords = served.passwords()
        assert list(passwords) == ["admin"]  # no demo endpoint: no demo viewer either
        assert served.url.startswith("http://127.0.0.1:")
        login = httpx.get(served.url + "/login")
        assert login.status_code == 200 and "Sign in" in login.text
        with httpx.Client(base_url=served.url) as client:
            me = client.post("/api/login", json={"name": "admin", "password": passwords["admin"]})
            assert me.status_code == 200 and me.json()["user"]["is_admin"] is True
    finally:
        code, out, err = served.stop(signal.SIGINT)
    assert code == 0, err
    assert "Traceback" not in err and "Traceback" not in out
    assert out.count(passwords["admin"]) == 1
    assert "stopped." in out

    # second start: the accounts exist, no password is printed again; SIGTERM stops it too
    again = Served(data, "--no-demo")
    try:
        assert again.passwords() == {}
        with httpx.Client(base_url=again.url) as client:
            assert client.post("/api/login", json={"name": "admin", "password": passwords["admin"]}).status_code == 200
    finally:
        code, out, err = again.stop(signal.SIGTERM)
    assert code == 0, err
    assert "Traceback" not in err
    assert passwords["admin"] not in out


def _demo_available() -> bool:
    return (ROOT / "protocols" / "demo_ssh.py").exists()


def test_serve_with_the_demo_endpoint(tmp_path):
    data = tmp_path / "data"
    served = Served(data)
    try:
        passwords = served.passwords()
        out = "\n".join(served.lines)
        if not _demo_available():
            assert "demo SSH endpoint is not available" in out
            assert list(passwords) == ["admin"]
        else:
            assert sorted(passwords) == ["admin", "demo"]
            assert "Demo endpoint 'demo'" in out
            # demo owns the demo endpoint and starts the session; the banner must not call it a viewer
            demo_line = next(line for line in served.lines if "name: demo" in line)
            assert "owner of the demo endpoint" in demo_line and "viewer" not in demo_line, demo_line
            assert "sign in as demo, press Quick Access" in out
            if shutil.which("Xvnc"):
                assert "Demo desktop 'demo-desktop': a VNC desktop" in out
            with httpx.Client(base_url=served.url) as client:
                answer = client.post("/api/login", json={"name": "demo", "password": passwords["demo"]})
                assert answer.status_code == 200
                home = client.get("/")
                assert home.status_code == 200 and "demo" in home.text
    finally:
        code, out, err = served.stop()
    assert code == 0, err
    assert "Traceback" not in err
    if _demo_available():
        from config.settings import load

        settings = load(env={}, server={"data_dir": str(data)})
        services = Services.build(settings, engine=None, bridge=None)  # type: ignore[arg-type]
        try:
            record = services.endpoints.get_by_name("demo")
            demo_user = services.users.get_by_name("demo")
            assert record is not None and record.joint_session and record.host == "127.0.0.1"
            assert record.secret_kind == "password" and record.host_key
            assert services.access.may_join(demo_user, record.id)
            with services.db.connect() as db:
                import sqlalchemy as sa

                blob = db.execute(sa.text("select secret from endpoints where name = 'demo'")).scalar_one()
            assert services.endpoints.stored_credentials(record.id).password.encode() not in blob
            desktop = services.endpoints.get_by_name("demo-desktop")
            if shutil.which("Xvnc"):
                assert desktop is not None and desktop.protocol.value == "vnc" and desktop.joint_session
                assert desktop.secret_kind == "password" and services.access.may_join(demo_user, desktop.id)
        finally:
            services.close()


def test_port_in_use_is_a_clear_error(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("COSESSION_")}
        result = subprocess.run(
            [sys.executable, "-m", "cosession.cli", "serve", "--port", str(port), "--no-demo",
             "--data-dir", str(tmp_path / "data")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "cosession serve:" in result.stderr


@pytest.mark.parametrize("argv", [["--help"]])
def test_serve_help(argv):
    result = subprocess.run([sys.executable, "-m", "cosession.cli", "serve", *argv], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--data-dir" in result.stdout
