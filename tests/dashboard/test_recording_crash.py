"""A gateway killed with SIGKILL in the middle of a recorded session loses nothing of its
recording that was written before the kill (docs/recordings.md, the crash bound): started again
on the same data directory it closes the recording as it is, its size and SHA-256 into the audit
chain (complete: false, recovered), and `cosession recordings verify` and `audit verify` pass.
`cosession serve` as a real process, its demo SSH endpoint under a Record profile."""

from __future__ import annotations

import json
import signal
import time

import httpx
import trio

from cosession.join import login, open_socket, send_json
from engine.recordings import read_cast
from tests.dashboard.test_serve import Served
from tests.dashboard.test_serve_restart import _config
from tests.unit.test_audit_cli import cosession


def _record_the_demo(data) -> None:
    """A Record profile for the demo user on the demo endpoint, as an operator gives it."""
    from config.settings import load
    from dashboard.repositories import Repositories
    from dashboard.security.secrets import Secrets

    settings = load(env={}, server={"data_dir": str(data)})
    repositories = Repositories.open(settings.database_url, Secrets.from_settings(settings))
    try:
        recorded = repositories.profiles.create_profile("Recorded", "record")
        endpoint = repositories.endpoints.get_by_name("demo")
        demo = repositories.users.get_by_name("demo")
        repositories.grants.grant(endpoint.id, demo.id, "owner", recorded.id)
    finally:
        repositories.close()


def test_a_killed_gateways_recording_keeps_what_was_written_and_is_closed_at_the_next_start(tmp_path):
    data = tmp_path / "data"
    config = _config(tmp_path, 0.2)
    served = Served(data, "--config", config)
    try:
        passwords = served.passwords()
        _record_the_demo(data)
        with httpx.Client(base_url=served.url) as demo:
            assert demo.post("/api/login", json={"name": "demo", "password": passwords["demo"]}).status_code == 200
            (endpoint,) = [e for e in demo.get("/api/endpoints").json()["endpoints"] if e["name"] == "demo"]
        cookie = login(served.url, "demo", passwords["demo"])
        started: list[str] = []

        async def run() -> None:
            async with open_socket(served.url, f"/ws/endpoints/{endpoint['id']}/start", cookie) as ws:
                await send_json(ws, {"type": "start", "cols": 80, "rows": 24})
                seen = b""
                with trio.fail_after(30):
                    while True:
                        message = await ws.get_message()
                        if isinstance(message, str):
                            m = json.loads(message)
                            assert m["type"] != "refused", m
                            if m["type"] == "joined":
                                assert m["recorded"] is True
                                started.append(m["session_id"])
                                await ws.send_message(b"echo before-$((6*7))-crash\r")
                        else:
                            seen += message
                            if b"before-42-crash" in seen:
                                break
                path = data / "recordings" / f"{started[0]}.cast"
                with trio.fail_after(30):  # written by a writer thread: in the file, not yet on the disk maybe
                    while not path.exists() or b"before-42-crash" not in path.read_bytes():
                        await trio.sleep(0.02)
                served.proc.send_signal(signal.SIGKILL)
                await trio.to_thread.run_sync(served.proc.wait, 30)

        trio.run(run)
    finally:
        code, _, _ = served.stop(signal.SIGKILL)
    assert code == -signal.SIGKILL
    session_id = started[0]
    path = data / "recordings" / f"{session_id}.cast"
    written = path.read_bytes()

    again = Served(data, "--config", config)
    try:
        with httpx.Client(base_url=again.url) as admin:
            admin.post("/api/login", json={"name": "admin", "password": passwords["admin"]})
            deadline = time.monotonic() + 30
            while True:  # the recording is closed by a writer thread once the engine has started
                rows = admin.get("/api/audit", params={"kind": "recording_closed", "session": session_id}).json()
                if rows["events"] or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            (row,) = rows["events"]
    finally:
        code, out, err = again.stop()
    assert code == 0, err
    detail = row["detail"]
    assert (detail["complete"], detail["recovered"], detail["end"]) == (False, True, "gateway_restarted")
    assert path.read_bytes() == written  # nothing written since the kill, nothing lost before it
    assert detail["bytes"] == len(written)
    cast = read_cast(written)
    assert "before-42-crash" in "".join(e[2] for e in cast.events if e[1] == "o")
    for command in (("recordings", "verify"), ("audit", "verify")):
        done = cosession(*command, "--data-dir", str(data))
        assert done.returncode == 0, done.stdout + done.stderr
