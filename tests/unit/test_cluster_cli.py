"""`cosession cluster status`, run as a separate process the way an operator runs it: the nodes
of the database, running, stopped or not seen, and the live sessions of each."""

from __future__ import annotations

import json

import pytest

from engine.clock import ManualClock
from engine.db import nodes
from engine.messages import AuditSessionEnded
from engine.store import StoreActor
from tests.unit.test_audit_cli import cosession
from tests.unit.test_nodes import T0, claim, clock, node, stores  # noqa: F401
from tests.unit.test_store import ALICE, BOB, execute, flush, started


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'cosession.db'}"  # where settings put it for --data-dir


def test_nodes_and_their_live_sessions(tmp_path, url, stores, clock):  # noqa: F811
    gw1, gw2, gw3 = node("gw1"), node("gw2"), node("gw3")
    running = stores(gw1)
    claim(running)
    running.tell(started("s1", ALICE, "ep1", at=T0))
    running.tell(started("s2", BOB, "ep2", at=T0 + 1))
    running.tell(AuditSessionEnded("s2", T0 + 2, "controller_left"))
    flush(running)
    stopped = stores(gw2)
    claim(stopped)
    stopped.stop(block=True)
    silent = StoreActor.start(url, ManualClock(T0 - 100), node=gw3)  # its last heartbeat: 100 s before
    try:
        claim(silent)
    finally:
        silent.stop(block=True)
    # stopped uncleanly: its row says it runs, but its heartbeat is old
    execute(url, nodes.update().where(nodes.c.node_id == "gw3").values(stopped_at=None))

    done = cosession("cluster", "status", "--data-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:3] == ["NODE", "STATE", "HOST"]
    assert [line.split()[:2] for line in lines[1:] if not line.startswith(" ")] == [
        ["gw1", "running"], ["gw2", "stopped"], ["gw3", "not"]]
    gw1_line = next(line for line in lines if line.startswith("gw1"))
    assert gw1_line.split()[-1] == "1"  # s1 only: s2 ended
    assert lines[lines.index(gw1_line) + 1].split()[:5] == ["s1", "ssh", "host-ep1", "controller", "Alice,"]

    as_json = cosession("cluster", "status", "--data-dir", str(tmp_path), "--json")
    assert as_json.returncode == 0, as_json.stderr
    listed = {n["node_id"]: n for n in json.loads(as_json.stdout)["nodes"]}
    assert {name: n["state"] for name, n in listed.items()} == {"gw1": "running", "gw2": "stopped", "gw3": "not seen"}
    assert [s["id"] for s in listed["gw1"]["sessions"]] == ["s1"]
    assert listed["gw2"]["sessions"] == [] and listed["gw2"]["live_sessions"] == 0


def test_no_database_is_an_error(tmp_path):
    done = cosession("cluster", "status", "--data-dir", str(tmp_path / "nothing"))
    assert done.returncode == 2
    assert "no database in" in done.stderr
    assert not (tmp_path / "nothing").exists()
