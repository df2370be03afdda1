"""The audit store: what it writes, when it commits, how it survives a busy or failing
database, and the dashboard's read queries."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import re
import threading
import time
import uuid

import pykka
import pytest
import sqlalchemy as sa

from engine.audit import verify
from engine.db import GENESIS_HASH, audit_events, audit_head, event_hash, sessions
from engine.messages import AuditEvent, AuditSessionEnded, AuditSessionStarted, Flush, Flushed, User
from engine import store as store_module
from engine.store import AuditReader, StoreActor
from tests.actors.conftest import wait_until

ALICE = User("alice", "Alice")
BOB = User("bob", "Bob")
CAROL = User("carol", "Carol")


# --- helpers, shared with test_audit_chain.py ----------------------------------------------------


# The same tests run on PostgreSQL too when this names a server (a fresh database is created
# for each test and dropped after it), e.g. postgresql+psycopg://postgres@127.0.0.1:5432/postgres
POSTGRES_URL = os.environ.get("COSESSION_TEST_POSTGRES_URL", "")


@pytest.fixture(params=["sqlite", "postgresql"] if POSTGRES_URL else ["sqlite"])
def url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'data' / 'audit.db'}"
        return
    base = sa.make_url(POSTGRES_URL)
    name = f"cosession_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        yield base.set(database=name).render_as_string(hide_password=False)
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


@pytest.fixture
def start_store():
    """Start stores; every one is stopped at the end, and no actor may outlive the test."""
    refs = []

    def start(url):
        ref = StoreActor.start(url)
        refs.append(ref)
        return ref

    yield start
    for ref in refs:
        if ref.is_alive():
            ref.stop(block=True, timeout=30)
    join_store_threads()
    assert pykka.ActorRegistry.get_all() == []


def join_store_threads(timeout=30.0):
    """Wait until every store thread has ended. An actor leaves the registry before its
    on_stop runs, so the registry alone does not say that on_stop is done."""
    for thread in threading.enumerate():
        if re.fullmatch(r"StoreActor-\d+", thread.name):
            thread.join(timeout)
            assert not thread.is_alive(), f"{thread.name} did not end"


def flush(ref, timeout=60.0) -> Flushed:
    future = concurrent.futures.Future()
    ref.tell(Flush(future.set_result))
    return future.result(timeout)


def query(url, statement):
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(statement).all()
    finally:
        engine.dispose()


def execute(url, *statements):
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(statement)
    finally:
        engine.dispose()


def started(session_id="s1", controller=ALICE, endpoint="ep1", at=100.0, record=False):
    return AuditSessionStarted(session_id, endpoint, f"host-{endpoint}", "ssh", controller.id, controller.name,
                               at, record)


def write_some(ref, n=10, session_id="s1", start_at=100.0):
    ref.tell(started(session_id, at=start_at))
    for i in range(n - 2):
        ref.tell(AuditEvent.make("input_refused", start_at + 1 + i, session_id, BOB, participant="p2", size=i))
    ref.tell(AuditSessionEnded(session_id, start_at + n, "controller_left"))
    return flush(ref)


# --- writing --------------------------------------------------------------------------------------


def test_rows_are_committed_after_flush_and_readable_from_another_connection(url, start_store):
    ref = start_store(url)
    ref.tell(started(record=True))
    ref.tell(AuditEvent.make("join", 101.0, "s1", BOB, participant="p2", role="viewer"))
    ref.tell(AuditSessionEnded("s1", 102.5, "terminated", by="Root"))
    assert flush(ref) == Flushed(3)

    rows = query(url, sa.select(audit_events).order_by(audit_events.c.id))
    assert [(r.kind, r.session_id, r.actor_id, r.actor_name) for r in rows] == [
        ("session_started", "s1", "alice", "Alice"),
        ("join", "s1", "bob", "Bob"),
        ("session_ended", "s1", None, "Root"),
    ]
    assert json.loads(rows[1].detail) == {"participant": "p2", "role": "viewer"}
    assert json.loads(rows[2].detail) == {"by": "Root", "reason": "terminated"}
    assert rows[0].prev_hash == GENESIS_HASH
    assert [r.prev_hash for r in rows[1:]] == [r.hash for r in rows[:-1]]

    (session,) = query(url, sa.select(sessions))
    assert session._asdict() == {
        "id": "s1", "endpoint_id": "ep1", "endpoint_name": "host-ep1", "protocol": "ssh",
        "controller_id": "alice", "controller_name": "Alice", "started_at": 100.0, "ended_at": 102.5,
        "end_reason": "terminated", "ended_by": "Root", "record": True,
        "node_id": None, "node_incarnation": None,  # a store given no node
    }
    (head,) = query(url, sa.select(audit_head))
    assert (head.last_id, head.last_hash, head.rows) == (rows[-1].id, rows[-1].hash, 3)


def test_the_hash_is_sha256_of_prev_hash_and_the_canonical_row(url, start_store):
    """The format is documented (docs/audit.md) so that anyone can check the chain without
    cosession: recompute it here with hashlib alone."""
    import hashlib

    ref = start_store(url)
    ref.tell(AuditEvent.make("extend", 0.1 + 0.2, "s1", ALICE, until=1e21, note="é"))
    flush(ref)
    (row,) = query(url, sa.select(audit_events))
    assert row.detail == '{"note":"\\u00e9","until":1e+21}'
    payload = '[0.30000000000000004,"s1","extend","alice","Alice","{\\"note\\":\\"\\\\u00e9\\",\\"until\\":1e+21}"]'
    assert row.hash == hashlib.sha256((GENESIS_HASH + payload).encode()).hexdigest()
    assert row.hash == event_hash(GENESIS_HASH, row.at, row.session_id, row.kind, row.actor_id, row.actor_name,
                                  row.detail)


def test_only_plain_values_reach_the_detail_never_bytes(url, start_store):
    ref = start_store(url)
    ref.tell(AuditEvent.make("odd", 1.0, data=b"hunter2", nan=float("nan"), obj=object(), items=(1, "a"),
                             nested={"k": {"b"}}))
    flush(ref)
    (row,) = query(url, sa.select(audit_events.c.detail))
    assert "hunter2" not in row.detail
    assert json.loads(row.detail) == {"data": "<7 bytes>", "items": [1, "a"], "nan": "nan",
                                      "nested": {"k": ["b"]}, "obj": "<object>"}
    assert verify(url).ok


def test_a_session_ends_once_the_first_end_counts(url, start_store):
    ref = start_store(url)
    ref.tell(started())
    ref.tell(AuditSessionEnded("s1", 110.0, "terminated", "Root"))
    ref.tell(AuditSessionEnded("s1", 111.0, "session_failed"))
    ref.tell(AuditSessionEnded("nope", 112.0, "session_failed"))  # unknown: the event is still kept
    flush(ref)
    (session,) = query(url, sa.select(sessions))
    assert (session.ended_at, session.end_reason, session.ended_by) == (110.0, "terminated", "Root")
    kinds = [r.kind for r in query(url, sa.select(audit_events.c.kind).order_by(audit_events.c.id))]
    assert kinds == ["session_started", "session_ended", "session_ended", "session_ended"]


class _Commits:
    """Counts the transactions committed on any SQLAlchemy engine of this process (the store's)."""

    def __init__(self):
        self.count = 0

    def __call__(self, _conn):
        self.count += 1


@pytest.fixture
def commits():
    counter = _Commits()
    sa.event.listen(sa.Engine, "commit", counter)
    yield counter
    sa.event.remove(sa.Engine, "commit", counter)


def test_rows_that_trickle_in_while_the_store_lingers_share_one_commit(url, start_store, commits, monkeypatch):
    """Each row arrives alone, just as the store, its inbox empty, waits for more: a join at a
    time during a large start-up. They are one transaction, committed once nothing more comes."""
    ref = start_store(url)
    flush(ref)
    to_come = [AuditEvent.make("input_refused", float(i), "s1", BOB, size=i) for i in range(1, 10)]
    lingered = []

    def linger(seconds):
        lingered.append(seconds)
        if to_come:
            ref.tell(to_come.pop(0))

    monkeypatch.setattr(store_module, "_linger", linger)
    before = commits.count
    ref.tell(AuditEvent.make("input_refused", 0.0, "s1", BOB, size=0))
    assert wait_until(lambda: query(url, sa.select(sa.func.count()).select_from(audit_events)) == [(10,)])
    assert commits.count - before == 1
    assert lingered == [store_module.COMMIT_LINGER_SECONDS] * 10  # the tenth found nothing more: commit
    assert verify(url).ok


def test_rows_that_keep_coming_are_committed_after_the_max_delay(url, start_store, commits, monkeypatch):
    """Every linger finds another row (5 ms later): the inbox is never quiet, yet the rows are
    committed once the oldest has waited COMMIT_MAX_DELAY_SECONDS, without a Flush."""
    ref = start_store(url)
    flush(ref)
    now = [1000.0]
    told = [0]

    def linger(seconds):
        if told[0] < 1000:  # bounded, should the store never commit
            now[0] += 0.005
            told[0] += 1
            ref.tell(AuditEvent.make("input_refused", float(told[0]), "s1", BOB, size=told[0]))

    monkeypatch.setattr(store_module, "_wall", lambda: now[0])
    monkeypatch.setattr(store_module, "_linger", linger)
    before = commits.count
    ref.tell(AuditEvent.make("input_refused", 0.0, "s1", BOB, size=0))
    assert wait_until(lambda: query(url, sa.select(sa.func.count()).select_from(audit_events)) != [(0,)])
    (committed,) = query(url, sa.select(sa.func.count()).select_from(audit_events))[0]
    assert 4 <= committed <= 6 and committed == told[0] + 1  # 20 ms of rows, one commit
    assert commits.count - before == 1
    assert verify(url).ok


def test_stop_commits_pending_rows(url, start_store):
    """Hold the store inside a Flush's reply_to while rows and the stop are told: the rows are
    then pending (the inbox is never empty after them), and only on_stop can commit them."""
    ref = start_store(url)
    flush(ref)  # the store is up and the tables exist
    release = threading.Event()
    ref.tell(Flush(lambda _: release.wait(10)))
    for i in range(100):
        ref.tell(AuditEvent.make("input_refused", float(i), "s1", BOB, size=i))
    ref.stop(block=False)
    assert query(url, sa.select(sa.func.count()).select_from(audit_events)) == [(0,)]
    release.set()
    join_store_threads()
    assert query(url, sa.select(sa.func.count()).select_from(audit_events)) == [(100,)]
    assert verify(url).ok


def test_an_unusable_database_fails_the_start_with_its_own_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError):  # the data directory cannot be created under a file
        StoreActor.start(f"sqlite:///{tmp_path / 'file' / 'audit.db'}")
    assert pykka.ActorRegistry.get_all() == []


def test_unknown_messages_are_logged_and_ignored(url, start_store, caplog):
    ref = start_store(url)
    with caplog.at_level(logging.WARNING, logger="engine.store"):
        ref.tell("not a message")
        ref.tell(AuditEvent.make("join", 1.0, "s1", BOB))
        assert flush(ref) == Flushed(1)
    assert ref.is_alive()
    assert "unknown message" in caplog.text


def test_a_briefly_locked_database_delays_the_commit_and_loses_nothing(url, start_store):
    if not url.startswith("sqlite"):
        pytest.skip("SQLite's database lock")
    ref = start_store(url)
    write_some(ref, 5)
    blocker = sa.create_engine(url)
    try:
        with blocker.connect() as conn:
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # another writer holds the lock
            for i in range(50):
                ref.tell(AuditEvent.make("input_refused", 200.0 + i, "s1", BOB, size=i))
            future = concurrent.futures.Future()
            ref.tell(Flush(future.set_result))
            with pytest.raises(concurrent.futures.TimeoutError):
                future.result(0.3)  # waiting on the busy timeout, not failing
            conn.exec_driver_sql("ROLLBACK")
        assert future.result(30) == Flushed(55)
    finally:
        blocker.dispose()
    assert verify(url).rows == 55


def test_a_failed_commit_is_logged_and_retried_without_losing_rows(url, start_store, monkeypatch, caplog):
    ref = start_store(url)
    flush(ref)
    real_write = StoreActor._write
    failures = []

    def flaky_write(self, batch):
        if len(failures) < 2:
            failures.append(len(batch))
            raise sa.exc.OperationalError("INSERT ...", {}, Exception("database is locked"))
        return real_write(self, batch)

    monkeypatch.setattr(StoreActor, "_write", flaky_write)
    with caplog.at_level(logging.ERROR, logger="engine.store"):
        for i in range(20):
            ref.tell(AuditEvent.make("input_refused", float(i), "s1", BOB, size=i))
        assert flush(ref).rows == 20
    assert len(failures) == 2
    assert "keeping them to retry" in caplog.text and "database is locked" in caplog.text
    assert verify(url).rows == 20


def test_a_refused_row_is_dropped_alone_and_logged(url, start_store, monkeypatch, caplog):
    ref = start_store(url)
    flush(ref)
    real_start = StoreActor._start_session

    def picky_start(conn, row):
        if row["id"] == "bad":
            raise sa.exc.IntegrityError("INSERT INTO sessions ...", {}, Exception("refused"))
        return real_start(conn, row)

    monkeypatch.setattr(StoreActor, "_start_session", staticmethod(picky_start))
    with caplog.at_level(logging.ERROR, logger="engine.store"):
        ref.tell(started("s1"))
        ref.tell(started("bad"))
        ref.tell(AuditEvent.make("join", 101.0, "s1", BOB))
        ref.tell(AuditSessionEnded("s1", 102.0, "terminated"))
        assert flush(ref).rows == 3
    assert "audit row dropped" in caplog.text and '"session_id":"bad"' in caplog.text
    assert [r.id for r in query(url, sa.select(sessions.c.id))] == ["s1"]
    assert verify(url).ok


def test_two_writers_on_one_database_keep_one_chain(url, start_store):
    """Only one store should write, but a second one (two gateways on one database by mistake)
    must not fork the chain: it notices the head moved and re-chains its rows."""
    first, second = start_store(url), start_store(url)
    for i in range(300):
        first.tell(AuditEvent.make("a", float(i), "s1", ALICE, i=i))
        second.tell(AuditEvent.make("b", float(i), "s2", BOB, i=i))
    flush(first)
    flush(second)
    report = verify(url)
    assert report.ok, report
    assert report.rows == 600


def test_a_lost_head_row_is_rebuilt_and_said_in_the_log(url, start_store):
    ref = start_store(url)
    write_some(ref, 4)
    ref.stop(block=True)
    execute(url, audit_head.delete())
    assert not verify(url).ok
    ref = start_store(url)
    ref.tell(AuditEvent.make("join", 300.0, "s2", BOB))
    flush(ref)
    kinds = [r.kind for r in query(url, sa.select(audit_events.c.kind).order_by(audit_events.c.id))]
    assert kinds[-2:] == ["audit_head_rebuilt", "join"]
    assert verify(url).ok


def test_ten_thousand_events(url, start_store):
    ref = start_store(url)
    flush(ref)
    began = time.perf_counter()
    for i in range(10_000):
        ref.tell(AuditEvent.make("input_refused", 1_700_000_000.0 + i / 1000, f"s{i % 50}", BOB,
                                 participant="p2", reason="not_controller", size=i % 100))
    assert flush(ref) == Flushed(10_000)
    elapsed = time.perf_counter() - began
    print(f"\n10,000 audit events committed in {elapsed:.3f} s: {10_000 / elapsed:,.0f} rows/s")
    began = time.perf_counter()
    report = verify(url)
    print(f"verified in {time.perf_counter() - began:.3f} s")
    assert report.ok and report.rows == 10_000


# --- reading --------------------------------------------------------------------------------------


@pytest.fixture
def reader_log(url, start_store):
    """Three sessions: s1 (alice, ep1, ended by terminate, bob joined), s2 (bob on ep2, ended),
    s3 (carol on ep1, live, alice joined)."""
    ref = start_store(url)
    ref.tell(started("s1", ALICE, "ep1", at=100.0))
    ref.tell(AuditEvent.make("join", 101.0, "s1", BOB, participant="p2", role="viewer"))
    ref.tell(AuditEvent.make("input_refused", 102.0, "s1", BOB, participant="p2", size=3))
    ref.tell(AuditEvent.make("terminate", 103.0, "s1", User("root", "Root", True)))
    ref.tell(AuditSessionEnded("s1", 103.0, "terminated", "Root"))
    ref.tell(started("s2", BOB, "ep2", at=200.0))
    ref.tell(AuditSessionEnded("s2", 250.0, "controller_left"))
    ref.tell(started("s3", CAROL, "ep1", at=300.0))
    ref.tell(AuditEvent.make("join", 301.0, "s3", ALICE, participant="p9", role="viewer"))
    ref.tell(AuditEvent.make("login", 302.0, None, ALICE))
    flush(ref)
    reader = AuditReader(url)
    yield reader
    reader.close()


def ids(rows):
    return [r["id"] for r in rows]


def test_reader_sessions_filters(reader_log):
    r = reader_log
    assert ids(r.sessions()[0]) == ["s3", "s2", "s1"]
    assert r.sessions(live=True) == (r.sessions(endpoint_id="ep1", live=True)[0], 1)
    assert ids(r.sessions(live=False)[0]) == ["s2", "s1"]
    assert ids(r.sessions(endpoint_id="ep1")[0]) == ["s3", "s1"]
    assert ids(r.sessions(end_reason="terminated")[0]) == ["s1"]
    assert ids(r.sessions(user="alice")[0]) == ["s3", "s1"]  # controller of s1, joined s3
    assert ids(r.sessions(user="Bob")[0]) == ["s2", "s1"]  # by name too
    assert ids(r.sessions(user="nobody")[0]) == []
    assert ids(r.sessions(since=220.0)[0]) == ["s3", "s2"]  # live at some time from 220 on
    assert ids(r.sessions(until=200.0)[0]) == ["s1"]
    assert ids(r.sessions(since=150.0, until=260.0)[0]) == ["s2"]
    live = r.sessions(live=True)[0][0]
    assert live["live"] is True and live["ended_at"] is None and live["record"] is False


def test_reader_sessions_pagination(reader_log):
    page, total = reader_log.sessions(limit=2)
    assert (ids(page), total) == (["s3", "s2"], 3)
    page, total = reader_log.sessions(limit=2, offset=2)
    assert (ids(page), total) == (["s1"], 3)
    assert reader_log.sessions(limit=2, offset=10) == ([], 3)


def test_reader_one_session(reader_log):
    s1 = reader_log.session("s1")
    assert (s1["controller_name"], s1["end_reason"], s1["ended_by"]) == ("Alice", "terminated", "Root")
    assert s1["participants"] == [{"actor_id": "bob", "actor_name": "Bob", "role": "viewer"}]
    assert reader_log.session("missing") is None


def test_reader_events_filters_and_pagination(reader_log):
    r = reader_log
    rows, total = r.events(session_id="s1")
    assert total == 5
    assert [e["kind"] for e in rows] == ["session_started", "join", "input_refused", "terminate", "session_ended"]
    assert rows[1]["detail"] == {"participant": "p2", "role": "viewer"}
    assert [e["session_id"] for e in r.events(kind="join")[0]] == ["s1", "s3"]
    assert r.events(kind=["join", "login"])[1] == 3
    assert [e["kind"] for e in r.events(actor="alice")[0]] == ["session_started", "join", "login"]
    assert [e["kind"] for e in r.events(actor="Root")[0]] == ["terminate", "session_ended"]
    assert [e["at"] for e in r.events(since=250.0, until=301.0)[0]] == [250.0, 300.0]
    page, total = r.events(limit=3, offset=3)
    assert ([e["id"] for e in page], total) == ([4, 5, 6], 10)
    page, _ = r.events(limit=2, newest_first=True)
    assert [e["kind"] for e in page] == ["login", "join"]
