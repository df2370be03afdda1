"""A gateway killed with SIGKILL and started again on the same data directory ends the sessions it
left open (gateway_restarted, with the time each was last seen), and no page or API shows them
as live any more (issue 10, item 4). `cosession serve` as a real process, with its demo SSH
endpoint, a session started through the real websocket."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import sqlalchemy as sa
import trio

from cosession.join import login, open_socket, send_json
from tests.dashboard.test_serve import ROOT, Served
from tests.unit.test_audit_cli import cosession


async def _start_demo_session(base_url: str, cookie: str, endpoint_id: str, hold: trio.Event,
                              started: list[str]) -> None:
    """Start a session on the demo endpoint as its controller; keep the websocket open until
    `hold` is set (or the gateway dies under it)."""
    async with open_socket(base_url, f"/ws/endpoints/{endpoint_id}/start", cookie) as ws:
        await send_json(ws, {"type": "start", "cols": 80, "rows": 24})
        while True:
            message = await ws.get_message()
            if isinstance(message, str):
                m = json.loads(message)
                assert m["type"] != "refused", m
                if m["type"] == "joined":
                    started.append(m["session_id"])
                    break
        with trio.move_on_after(60):
            await hold.wait()


def _last_seen(data) -> float:
    """When the node's heartbeat was last written, as its database says."""
    engine = sa.create_engine(f"sqlite:///{data / 'cosession.db'}")
    try:
        with engine.connect() as db:
            return db.execute(sa.text("select max(last_seen_at) from nodes")).scalar() or 0.0
    finally:
        engine.dispose()


def _config(tmp_path, heartbeat: float) -> str:
    path = tmp_path / "cosession.toml"
    path.write_text(f"[engine]\nheartbeat_seconds = {heartbeat}\n")
    return str(path)


def test_a_killed_gateways_sessions_end_when_it_starts_again(tmp_path):
    data = tmp_path / "data"
    config = _config(tmp_path, 0.2)  # a quick heartbeat, so that "last seen" is after the start
    served = Served(data, "--config", config)
    try:
        passwords = served.passwords()
        assert sorted(passwords) == ["admin", "demo"]
        with httpx.Client(base_url=served.url) as demo:
            assert demo.post("/api/login", json={"name": "demo", "password": passwords["demo"]}).status_code == 200
            (endpoint,) = [e for e in demo.get("/api/endpoints").json()["endpoints"] if e["name"] == "demo"]
        cookie = login(served.url, "demo", passwords["demo"])
        started: list[str] = []
        hold = trio.Event()
        killed_at: list[float] = []

        async def run() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_start_demo_session, served.url, cookie, endpoint["id"], hold, started)
                with trio.fail_after(30):
                    while not started:
                        await trio.sleep(0.01)
                session_id = started[0]
                with httpx.Client(base_url=served.url) as admin:
                    admin.post("/api/login", json={"name": "admin", "password": passwords["admin"]})
                    before = admin.get(f"/api/sessions/{session_id}").json()["session"]
                    assert (before["live"], before["state"], before["ended_at"]) == (True, "active", None)
                # heartbeats vouch for the node after the session's start (the gateway's own clock)
                with trio.fail_after(30):
                    while await trio.to_thread.run_sync(_last_seen, data) < before["started_at"] + 0.6:
                        await trio.sleep(0.05)  # a poll of the database the gateway writes
                killed_at.append(time.time())
                served.proc.send_signal(signal.SIGKILL)
                await trio.to_thread.run_sync(served.proc.wait, 30)
                hold.set()

        trio.run(run)
    finally:
        code, _, _ = served.stop(signal.SIGKILL)
    assert code == -signal.SIGKILL
    session_id = started[0]

    # the same data directory, a new process
    again = Served(data, "--config", config)
    try:
        assert again.passwords() == {}
        with httpx.Client(base_url=again.url) as admin:
            signed_in = admin.post("/api/login", json={"name": "admin", "password": passwords["admin"]})
            admin.headers["X-CSRF-Token"] = signed_in.json()["csrf_token"]
            after = admin.get(f"/api/sessions/{session_id}").json()["session"]
            assert (after["live"], after["state"], after["end_reason"], after["ended_by"]) == (
                False, "ended", "gateway_restarted", None)
            # ended when it was last seen running: after its start, before the kill
            assert after["started_at"] < after["ended_at"] <= killed_at[0]
            assert after["ended_at"] > after["started_at"] + 0.5  # the heartbeat vouched for it

            assert admin.get("/api/sessions").json() == {"sessions": [], "total": 0}
            assert admin.get("/api/connections", params={"live": "true"}).json()["total"] == 0
            terminate = admin.post(f"/api/sessions/{session_id}/terminate")
            assert terminate.status_code == 409, terminate.text
            assert terminate.json()["error"] == "session_ended"

            (row,) = admin.get("/api/audit", params={"kind": "session_ended", "session": session_id}).json()["events"]
            assert row["detail"] == {"reason": "gateway_restarted", "by": None, "last_seen_at": after["ended_at"]}

            page = admin.get("/connections").text
            row_html = re.search(rf'<tr data-session-id="{session_id}".*?</tr>', page, re.S).group(0)
            assert 'data-state="ended"' in row_html and "gateway restarted" in row_html
            assert "data-live-row" not in row_html
    finally:
        code, out, err = again.stop()
    assert code == 0, err
    assert "Traceback" not in err
    # and the log with its sessions table still verifies
    done = cosession("audit", "verify", "--data-dir", str(data))
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_second_gateway_on_the_same_database_and_node_name_refuses_to_start(tmp_path):
    data = tmp_path / "data"
    served = Served(data, "--no-demo")
    try:
        served.passwords()
        env = {k: v for k, v in os.environ.items() if not k.startswith("COSESSION_")}
        done = subprocess.run([sys.executable, "-m", "cosession.cli", "serve", "--port", "0", "--no-demo",
                               "--data-dir", str(data)], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "is already running on this database" in done.stderr and "engine.node_id" in done.stderr
        assert "Traceback" not in done.stderr
        # the first one is untouched and still serves
        assert httpx.get(served.url + "/login").status_code == 200
    finally:
        code, _, err = served.stop()
    assert code == 0, err
