"""`engine.audit.verify`: an intact chain passes; an altered, removed or rewritten row is named."""

from __future__ import annotations

import concurrent.futures

import pytest
import sqlalchemy as sa

from engine.audit import AuditLogMissing, VerifyReport, verify
from engine.db import audit_events, audit_head, event_hash, sessions
from engine.messages import AuditEvent, AuditSessionEnded, Flush
from tests.unit.test_store import BOB, execute, flush, query, start_store, started, url, write_some  # noqa: F401


def _log(url, start_store, n=10):  # noqa: F811
    ref = start_store(url)
    write_some(ref, n)
    ref.stop(block=True)
    return ref


def test_a_fresh_log_is_intact(url, start_store):  # noqa: F811
    ref = start_store(url)
    flush(ref)
    assert verify(url) == VerifyReport(True, 0, None, "", None, None)
    write_some(ref, 10)
    report = verify(url)
    assert report.ok and report.rows == 10 and report.first_bad_id is None and report.problem == ""
    (head,) = query(url, sa.select(audit_events.c.id, audit_events.c.hash).order_by(audit_events.c.id.desc()).limit(1))
    assert (report.head_id, report.head_hash) == (head.id, head.hash)


def test_an_altered_detail_names_the_row(url, start_store):  # noqa: F811
    _log(url, start_store)
    execute(url, audit_events.update().where(audit_events.c.id == 4).values(detail='{"size":999}'))
    report = verify(url)
    assert (report.ok, report.first_bad_id, report.rows) == (False, 4, 3)
    assert "row 4 was altered" in report.problem


@pytest.mark.parametrize("column, value", [("at", 1.0), ("kind", "join"), ("actor_name", "Mallory"),
                                           ("session_id", None), ("prev_hash", "f" * 64)])
def test_any_altered_column_names_the_row(url, start_store, column, value):  # noqa: F811
    _log(url, start_store)
    execute(url, audit_events.update().where(audit_events.c.id == 6).values({column: value}))
    assert verify(url).first_bad_id == 6


def test_an_altered_row_with_a_recomputed_hash_is_caught_at_the_next_row(url, start_store):  # noqa: F811
    _log(url, start_store)
    (row,) = query(url, sa.select(audit_events).where(audit_events.c.id == 5))
    forged = event_hash(row.prev_hash, row.at, row.session_id, row.kind, row.actor_id, "Mallory", row.detail)
    execute(url, audit_events.update().where(audit_events.c.id == 5).values(actor_name="Mallory", hash=forged))
    report = verify(url)
    assert (report.ok, report.first_bad_id) == (False, 6)
    assert "row 5 was rewritten" in report.problem


def test_a_deleted_middle_row_names_the_row_after_the_gap(url, start_store):  # noqa: F811
    _log(url, start_store)
    execute(url, audit_events.delete().where(audit_events.c.id.in_([5, 6])))
    report = verify(url)
    assert (report.ok, report.first_bad_id, report.rows) == (False, 7, 4)
    assert "between row 4 and row 7 were removed" in report.problem


def test_a_deleted_first_row_is_caught(url, start_store):  # noqa: F811
    _log(url, start_store)
    execute(url, audit_events.delete().where(audit_events.c.id == 1))
    report = verify(url)
    assert (report.ok, report.first_bad_id) == (False, 2)
    assert "before row 2 were removed" in report.problem


def test_deleted_last_rows_are_caught_by_the_head(url, start_store):  # noqa: F811
    _log(url, start_store)
    execute(url, audit_events.delete().where(audit_events.c.id > 7))
    report = verify(url)
    assert (report.ok, report.rows, report.first_bad_id) == (False, 7, 8)
    assert "the last 3 rows after row 7 were removed" in report.problem


def test_every_row_deleted_is_caught(url, start_store):  # noqa: F811
    _log(url, start_store)
    execute(url, audit_events.delete())
    report = verify(url)
    assert not report.ok and "the last 10 rows" in report.problem


def test_deleted_last_rows_stay_caught_after_new_rows(url, start_store):  # noqa: F811
    """The store chains from the head, not from the last surviving row: the gap shows."""
    _log(url, start_store)
    execute(url, audit_events.delete().where(audit_events.c.id > 7))
    ref = start_store(url)
    ref.tell(AuditEvent.make("join", 500.0, "s9", BOB))
    flush(ref)
    report = verify(url)
    assert (report.ok, report.first_bad_id) == (False, 11)  # AUTOINCREMENT: ids 8-10 are not reused
    assert "between row 7 and row 11 were removed" in report.problem


def test_a_deleted_head_is_caught(url, start_store):  # noqa: F811
    _log(url, start_store)
    execute(url, audit_head.delete())
    report = verify(url)
    assert not report.ok and "head record is missing" in report.problem


def test_a_tampered_head_is_caught(url, start_store):  # noqa: F811
    _log(url, start_store)
    execute(url, audit_head.update().values(rows=11))
    report = verify(url)
    assert not report.ok and "the head names row 10 with 11 rows" in report.problem


def test_anchors_catch_a_chain_rewritten_from_the_start(url, start_store):  # noqa: F811
    """Whoever can write the database can rewrite every hash from the first changed row on,
    and the head: verify alone passes. A hash kept elsewhere does not."""
    _log(url, start_store)
    anchor = verify(url)
    rows = query(url, sa.select(audit_events).order_by(audit_events.c.id))
    prev, updates = rows[0].prev_hash, []
    for row in rows:
        name = "Mallory" if row.id == 3 else row.actor_name
        digest = event_hash(prev, row.at, row.session_id, row.kind, row.actor_id, name, row.detail)
        updates.append(audit_events.update().where(audit_events.c.id == row.id)
                       .values(actor_name=name, prev_hash=prev, hash=digest))
        prev = digest
    updates.append(audit_head.update().values(last_hash=prev))
    execute(url, *updates)
    assert verify(url).ok  # forged
    report = verify(url, anchors={anchor.head_id: anchor.head_hash})
    assert (report.ok, report.first_bad_id) == (False, 10)
    assert verify(url, anchors={1: rows[0].hash, 2: rows[1].hash}).ok  # before the change: untouched


def test_an_anchored_row_that_was_removed_is_caught(url, start_store):  # noqa: F811
    _log(url, start_store)
    (row,) = query(url, sa.select(audit_events).where(audit_events.c.id == 10))
    assert row.kind == "session_ended"
    execute(url, audit_events.delete().where(audit_events.c.id == 10),
            audit_head.update().values(last_id=9, rows=9,
                                       last_hash=query(url, sa.select(audit_events.c.hash)
                                                       .where(audit_events.c.id == 9))[0].hash))
    # the sessions row still says what the removed row said: that alone gives it away
    assert verify(url).problem.startswith("session s1: its sessions row was altered: ended_at is ")
    execute(url, sessions.update().values(ended_at=None, end_reason=None, ended_by=None))
    assert verify(url).ok  # the head and the sessions row were forged too
    report = verify(url, anchors={10: row.hash})
    assert (report.ok, report.first_bad_id) == (False, 10)
    assert "anchored row 10 is missing" in report.problem


def test_a_missing_database_is_an_error_and_is_not_created(tmp_path):
    path = tmp_path / "nope" / "audit.db"
    with pytest.raises(AuditLogMissing, match="no audit database"):
        verify(f"sqlite:///{path}")
    assert not path.parent.exists()


def test_a_database_without_an_audit_log_is_an_error(tmp_path):
    path = tmp_path / "other.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    engine.dispose()
    with pytest.raises(AuditLogMissing, match="holds no audit log"):
        verify(f"sqlite:///{path}")


def test_verify_while_the_store_writes(url, start_store):  # noqa: F811
    """The head and the rows are read from one snapshot: rows committed meanwhile are not
    mistaken for a broken head."""
    ref = start_store(url)
    write_some(ref, 10)
    for i in range(30_000):
        ref.tell(AuditEvent.make("input_refused", float(i), "s1", BOB, size=i))
    done = concurrent.futures.Future()
    ref.tell(Flush(done.set_result))
    reports = [verify(url)]
    while not done.done():
        reports.append(verify(url))
    assert [r for r in reports if not r.ok] == []
    assert verify(url).rows == 30_010


# --- the sessions table: a checked projection of the chain ----------------------------------------


def _sessions_log(url, start_store):  # noqa: F811
    ref = start_store(url)
    write_some(ref, 6, "s1", 100.0)  # ended: controller_left
    ref.tell(started("s2", at=200.0, record=True))  # live
    flush(ref)
    ref.stop(block=True)


@pytest.mark.parametrize("column, value", [
    ("end_reason", "terminated"), ("ended_at", 999.0), ("ended_by", "Root"), ("controller_name", "Mallory"),
    ("controller_id", "mallory"), ("started_at", 1.0), ("endpoint_id", "ep9"), ("endpoint_name", "elsewhere"),
    ("protocol", "vnc"), ("record", True),
])
def test_an_altered_sessions_row_is_named(url, start_store, column, value):  # noqa: F811
    _sessions_log(url, start_store)
    assert verify(url).ok
    execute(url, sessions.update().where(sessions.c.id == "s1").values({column: value}))
    report = verify(url)
    assert (report.ok, report.session_id, report.first_bad_id) == (False, "s1", None)
    assert report.problem.startswith(f"session s1: its sessions row was altered: {column} is ")
    assert report.rows == 7  # the chain itself is intact, and was walked to its end


def test_a_live_session_made_to_look_ended_is_named(url, start_store):  # noqa: F811
    _sessions_log(url, start_store)
    execute(url, sessions.update().where(sessions.c.id == "s2").values(ended_at=250.0, end_reason="terminated"))
    report = verify(url)
    assert report.session_id == "s2" and "ended_at is 250.0, but the chain says None" in report.problem


def test_an_invented_or_removed_sessions_row_is_named(url, start_store):  # noqa: F811
    _sessions_log(url, start_store)
    execute(url, sessions.insert().values(id="s0", endpoint_id="ep1", endpoint_name="host-ep1", protocol="ssh",
                                          controller_id="alice", controller_name="Alice", started_at=1.0))
    report = verify(url)
    assert (report.session_id, report.problem) == (
        "s0", "session s0: its sessions row is not in the chain: no session_started event names it")
    execute(url, sessions.delete().where(sessions.c.id.in_(["s0", "s2"])))
    report = verify(url)
    assert report.session_id == "s2"
    assert report.problem == "session s2: its sessions row was removed (its session_started is row 7)"


def test_a_later_start_and_the_first_end_are_what_the_row_must_say(url, start_store):  # noqa: F811
    ref = start_store(url)
    ref.tell(AuditSessionEnded("s1", 99.0, "terminated"))  # before its start: not applied
    ref.tell(started("s1", at=100.0))
    ref.tell(AuditSessionEnded("s1", 101.0, "controller_left"))
    ref.tell(AuditSessionEnded("s1", 102.0, "terminated"))  # a second end: not applied
    ref.tell(started("s1", at=103.0, endpoint="ep2"))  # told twice: the later start wins
    flush(ref)
    ref.stop(block=True)
    (row,) = query(url, sa.select(sessions))
    assert (row.started_at, row.endpoint_id, row.ended_at, row.end_reason) == (103.0, "ep2", 101.0, "controller_left")
    assert verify(url).ok
