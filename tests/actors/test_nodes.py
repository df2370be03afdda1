"""The engine as a node (engine/nodes.py): it claims its name when it starts, and refuses to
start under a name that a running engine holds on the same database."""

import pytest

from config.settings import load
from engine.errors import NodeInUse
from engine.runtime import actor_threads
from tests.actors.conftest import ALICE, SSH, assert_nothing_left, census, make_engine, tree


def test_one_name_one_running_engine_per_database(tmp_path, clock):
    settings = load(env={}, engine={"node_id": "gw1"})
    first = make_engine(settings, clock, tmp_path).start()
    try:
        assert first.node.node_id == "gw1" and first.recovered == ()
        session = first.open_session(SSH, ALICE)
        with pytest.raises(NodeInUse, match="node 'gw1' is already running"):
            make_engine(settings, clock, tmp_path).start()
        # the refused engine stopped what it had started, and the first one goes on
        assert sorted(t.name.rsplit("-", 1)[0] for t in actor_threads()) == \
            ["StoreActor"] + [first.actor_pool.name] * first.settings.engine.actor_workers
        assert census(first) == tree(sessions=1, participants=1)
        session.send_input(b"still mine\r")
        assert session.wait_for_output(b"still mine")
    finally:
        first.stop()
    assert_nothing_left(first)
    again = make_engine(settings, clock, tmp_path).start()  # a clean stop ended its sessions itself
    try:
        assert again.recovered == ()
    finally:
        again.stop()
