"""engine/nodes.py through the store: a node claims its row, ends what an earlier run left open
(gateway_restarted, with the time it was last seen), beats, stops; the reader shows as live only
what a live node runs; a running process's name is never taken over."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys

import pykka
import pytest
import sqlalchemy as sa

from engine.audit import verify
from engine.clock import ManualClock
from engine.db import audit_events, make_engine, nodes, sessions
from engine.errors import NodeInUse
from engine.messages import AuditEvent, AuditSessionEnded, ClaimNode, NodeClaimed
from engine.nodes import Node, release
from engine.store import AuditReader, StoreActor
from tests.unit.test_store import BOB, execute, flush, join_store_threads, query, started, url  # noqa: F401

T0 = 1_800_000_000.0


@pytest.fixture
def clock():
    return ManualClock(T0)


@pytest.fixture
def stores(url, clock):  # noqa: F811
    """Start stores on `url` for a node; all stopped at the end."""
    refs = []

    def start(node, **kwargs):
        kwargs.setdefault("heartbeat_seconds", 10.0)
        ref = StoreActor.start(url, clock, node=node, **kwargs)
        refs.append(ref)
        return ref

    yield start
    for ref in refs:
        if ref.is_alive():
            ref.stop(block=True, timeout=30)
    join_store_threads()
    assert pykka.ActorRegistry.get_all() == []


def claim(ref, timeout=30.0):
    future = concurrent.futures.Future()
    ref.tell(ClaimNode(future.set_result))
    return future.result(timeout)


def node(name="gw1", pid=None):
    this = Node.this_process(name)
    return Node(this.node_id, this.incarnation, this.host, pid if pid is not None else this.pid)


def crash(ref, run):
    """What kill -9 leaves: the rows written so far, and no word that the node stopped. The
    actor's thread is stopped without its on_stop (which would say so), and its process (here,
    its claim in this process) is gone."""
    flush(ref)
    on_stop = StoreActor.on_stop

    def lights_out(self):  # its connections close (the process is gone), nothing is written
        self._close()
        self._engine.dispose()

    StoreActor.on_stop = lights_out  # type: ignore[method-assign]
    try:
        ref.stop(block=True, timeout=30)
    finally:
        StoreActor.on_stop = on_stop  # type: ignore[method-assign]
    release(run)


def node_row(url, name="gw1"):  # noqa: F811
    (row,) = query(url, sa.select(nodes).where(nodes.c.node_id == name))
    return row


def test_a_restarted_node_ends_what_its_earlier_run_left_open(url, stores, clock):  # noqa: F811
    first = node()
    ref = stores(first)
    assert claim(ref) == NodeClaimed("gw1", ())
    ref.tell(started("s1", at=T0 + 1))
    ref.tell(started("s2", at=T0 + 2))
    ref.tell(AuditSessionEnded("s2", T0 + 3, "controller_left"))
    for _ in range(2):  # two heartbeats
        clock.advance(10)
        flush(ref)
    assert node_row(url).last_seen_at == T0 + 20
    clock.advance(6)
    ref.tell(started("s3", at=clock.now()))  # after the last heartbeat
    crash(ref, first)

    clock.advance(100)
    second = node()
    ref = stores(second)
    assert claim(ref) == NodeClaimed("gw1", ("s1", "s3"))
    flush(ref)
    ended = {r.session_id: json.loads(r.detail) for r in query(url, sa.select(audit_events)
                                                                  .where(audit_events.c.kind == "session_ended"))}
    assert ended["s1"] == {"reason": "gateway_restarted", "by": None, "last_seen_at": T0 + 20}
    assert ended["s3"] == {"reason": "gateway_restarted", "by": None, "last_seen_at": T0 + 26}
    assert ended["s2"]["reason"] == "controller_left"  # ended before: untouched
    rows = {r.id: r for r in query(url, sa.select(sessions))}
    assert (rows["s1"].ended_at, rows["s1"].end_reason) == (T0 + 20, "gateway_restarted")
    assert rows["s3"].ended_at == T0 + 26
    assert rows["s1"].node_id == "gw1" and rows["s1"].node_incarnation == first.incarnation
    row = node_row(url)
    assert (row.incarnation, row.started_at, row.stopped_at) == (second.incarnation, T0 + 126, None)
    assert verify(url).ok


def test_sessions_of_other_nodes_are_theirs_and_rows_without_a_node_are_this_gateways(url, stores):  # noqa: F811
    other = stores(node("gw2"))
    claim(other)
    other.tell(started("theirs"))
    flush(other)
    legacy = StoreActor.start(url)  # a store given no node: as every row was before nodes
    try:
        legacy.tell(started("legacy"))
        flush(legacy)
    finally:
        legacy.stop(block=True)
    assert query(url, sa.select(sessions.c.node_id).where(sessions.c.id == "legacy")) == [(None,)]
    mine = stores(node("gw1"))
    assert claim(mine) == NodeClaimed("gw1", ("legacy",))
    flush(mine)
    live = dict(query(url, sa.select(sessions.c.id, sessions.c.end_reason)))
    assert live == {"theirs": None, "legacy": "gateway_restarted"}


def test_a_name_in_use_by_a_running_process_is_refused_and_nothing_changes(url, stores, clock):  # noqa: F811
    # a live process on this host (not this one) that beat a moment ago
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run = node(pid=holder.pid)
        ref = stores(run)
        claim(ref)
        ref.tell(started("s1"))
        crash(ref, run)
        clock.advance(5)
        newcomer = stores(node())
        answer = claim(newcomer)
        assert isinstance(answer, NodeInUse)
        assert f"pid {holder.pid}" in str(answer) and "engine.node_id" in str(answer)
        assert query(url, sa.select(sessions.c.ended_at)) == [(None,)]
        holder.kill()
        holder.wait()
        # that process is gone: its run is over, whatever its heartbeat says
        assert claim(newcomer) == NodeClaimed("gw1", ("s1",))
    finally:
        holder.kill()
        holder.wait()


def test_a_name_in_use_by_another_engine_of_this_process_is_refused(url, stores):  # noqa: F811
    claim(stores(node()))
    assert isinstance(claim(stores(node())), NodeInUse)


def test_another_hosts_run_holds_its_name_until_its_heartbeat_is_three_beats_old(url, stores, clock):  # noqa: F811
    run = node()
    ref = stores(run)
    claim(ref)
    crash(ref, run)
    execute(url, nodes.update().values(host="elsewhere"))
    clock.advance(29)
    newcomer = stores(node())
    assert isinstance(claim(newcomer), NodeInUse)
    clock.advance(1)
    assert isinstance(claim(newcomer), NodeClaimed)


def test_a_clean_stop_says_so_and_frees_the_name(url, stores, clock):  # noqa: F811
    ref = stores(node())
    claim(ref)
    clock.advance(3)
    ref.stop(block=True)
    row = node_row(url)
    assert row.stopped_at == T0 + 3 and row.last_seen_at == T0 + 3
    assert isinstance(claim(stores(node())), NodeClaimed)


def test_the_reader_shows_live_only_what_a_live_node_runs(url, stores, clock):  # noqa: F811
    run_b = node("gw2")
    a, b = stores(node("gw1")), stores(run_b)
    claim(a)
    claim(b)
    a.tell(started("on-a"))
    b.tell(started("on-b"))
    flush(a)
    flush(b)
    reader = AuditReader(url)
    try:
        def live():
            rows, _ = reader.sessions(live=True)
            return sorted(r["id"] for r in rows)

        assert live() == ["on-a", "on-b"]
        crash(b, run_b)  # gw2 dies; gw1 goes on beating
        for _ in range(3):
            clock.advance(10)
            flush(a)
        assert live() == ["on-a", "on-b"]  # gw2 was last seen 30 s before gw1: not yet three beats behind
        clock.advance(10)
        flush(a)
        assert live() == ["on-a"]
        lost = reader.session("on-b")
        # gw1, the one survivor, ended it at that beat, as of gw2's last heartbeat (its claim)
        assert (lost["live"], lost["end_reason"]) == (False, "node_failed")
        assert lost["ended_at"] == clock.now() - 40
        rows, total = reader.sessions(live=False)
        assert [r["id"] for r in rows] == ["on-b"] and total == 1
    finally:
        reader.close()


def test_an_older_database_gets_the_node_columns(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = sa.create_engine(url)
    with old.begin() as conn:  # the sessions table as it was before nodes
        conn.exec_driver_sql("CREATE TABLE sessions (id TEXT PRIMARY KEY, endpoint_id TEXT NOT NULL, "
                             "endpoint_name TEXT NOT NULL, protocol TEXT NOT NULL, controller_id TEXT NOT NULL, "
                             "controller_name TEXT NOT NULL, started_at FLOAT NOT NULL, ended_at FLOAT, "
                             "end_reason TEXT, ended_by TEXT, record BOOLEAN NOT NULL)")
        conn.exec_driver_sql("INSERT INTO sessions VALUES ('old', 'ep', 'box', 'ssh', 'alice', 'Alice', 1.0, "
                             "NULL, NULL, NULL, 0)")
    old.dispose()
    make_engine(url).dispose()
    columns = {c["name"] for c in sa.inspect(sa.create_engine(url)).get_columns("sessions")}
    assert {"node_id", "node_incarnation"} <= columns
    assert query(url, sa.select(sessions.c.id, sessions.c.node_id)) == [("old", None)]
    indexes = {i["name"] for i in sa.inspect(sa.create_engine(url)).get_indexes("sessions")}
    assert "ix_sessions_node_live" in indexes


def test_refusals_reach_the_log_counted_on_the_stores_clock(url, stores, clock):  # noqa: F811
    ref = stores(node(), refusal_interval=10.0)
    claim(ref)
    for n in range(50):
        ref.tell(AuditEvent.make("input_refused", clock.now(), "s1", BOB, participant="p2",
                                 reason="not_controller", size=1))
    flush(ref)  # a Flush writes what is counted so far; the interval goes on
    clock.advance(5)
    ref.tell(AuditEvent.make("input_refused", clock.now(), "s1", BOB, participant="p2", reason="not_controller",
                             size=1))
    clock.advance(5)  # the interval ends: its count is written by the store's own timer
    flush(ref)
    rows = [json.loads(r.detail) for r in query(url, sa.select(audit_events.c.detail)
                                                .where(audit_events.c.kind == "input_refused")
                                                .order_by(audit_events.c.id))]
    assert [r.get("count") for r in rows] == [None, 49, 1]
    assert sum(r.get("count", 1) for r in rows) == 51 and rows[1]["size"] == 49
