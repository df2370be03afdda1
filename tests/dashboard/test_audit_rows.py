"""What the audit log says about sessions, against the real gateway: an edited sessions row is
named by `cosession audit verify` (issue 10, item 6), and a refused eject names its sender as well
as its target (item 7)."""

from __future__ import annotations

import sqlite3

import trio

from tests.fixtures.websockets import session_with_viewer
from tests.unit.test_audit_cli import cosession


async def test_an_edited_sessions_row_is_named_by_audit_verify(harness):
    gateway = harness.gateway
    harness.user("alice")
    controller, joined = await harness.start("alice")
    sid = joined["session_id"]
    await controller.control("state", state="active")
    await controller.send({"type": "leave"})
    await controller.until_closed()
    await harness.audit("session_ended")  # committed
    database = gateway.data_dir / "cosession.db"

    def verify() -> tuple[int, str]:
        done = cosession("audit", "verify", "--data-dir", str(gateway.data_dir))
        return done.returncode, done.stdout + done.stderr

    code, out = await trio.to_thread.run_sync(verify)
    assert code == 0, out

    # what Connections and the API show, edited by hand: the end reason and who ended it
    with sqlite3.connect(database) as db:
        db.execute("UPDATE sessions SET end_reason = 'terminated', ended_by = 'admin' WHERE id = ?", (sid,))
    code, out = await trio.to_thread.run_sync(verify)
    assert code == 1
    assert out.startswith(f"audit log broken: session {sid}: its sessions row was altered: "
                          "end_reason is 'terminated', but the chain says 'controller_left' (row ")
    # the API's check says the same, and names the session
    client = gateway.api_session("alice", "correct horse battery")
    assert client.get("/api/audit/verify").status_code == 403  # administrators only
    gateway.create_user("root", "correct horse battery", admin=True)
    admin = gateway.api_session("root", "correct horse battery")
    status = await trio.to_thread.run_sync(lambda: admin.get("/api/audit/verify").json())
    assert (status["ok"], status["session_id"]) == (False, sid)

    # put back, then removed altogether
    with sqlite3.connect(database) as db:
        db.execute("UPDATE sessions SET end_reason = 'controller_left', ended_by = 'alice' WHERE id = ?", (sid,))
    code, out = await trio.to_thread.run_sync(verify)
    assert code == 0, out
    with sqlite3.connect(database) as db:
        db.execute("DELETE FROM sessions WHERE id = ?", (sid,))
    code, out = await trio.to_thread.run_sync(verify)
    assert code == 1 and f"session {sid}: its sessions row was removed" in out


async def test_a_refused_eject_names_its_sender_and_its_target(harness):
    controller, viewer, sid = await session_with_viewer(harness)
    harness.user("carol")
    carol, answer = await harness.join("carol", sid)
    assert answer["type"] == "joined"
    controller_pid = controller.controls[0]["participant_id"]
    viewer_pid, carol_pid = viewer.controls[0]["participant_id"], answer["participant_id"]
    await viewer.send({"type": "eject", "participant_id": carol_pid, "reason": "mine now"})
    await viewer.control("refused", reason="not_permitted", of="eject")
    await controller.send({"type": "eject", "participant_id": carol_pid, "reason": "wrong ticket"})
    await carol.control("ejected")
    rows = {r["kind"]: r for r in await harness.audit(["eject_refused", "eject"])}
    refused = rows["eject_refused"]
    assert refused["actor_name"] == "bob"
    assert refused["detail"] == {"participant": carol_pid, "user": "carol", "by_participant": viewer_pid,
                                 "by_user": "bob", "reason": "not_permitted"}
    assert rows["eject"]["detail"] == {"participant": carol_pid, "user": "carol", "by_participant": controller_pid,
                                       "by_user": "alice", "reason": "wrong ticket"}
