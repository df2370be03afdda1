import json
import threading
import time
from collections import Counter

import pytest
import sqlalchemy as sa

from config.settings import load
from engine.clock import ManualClock
from engine.messages import EndpointSpec, EndpointProtocol, User
from engine.runtime import Engine, actor_threads
from protocols.synthetic import SyntheticConnection

ALICE = User("alice", "Alice")
ADMIN = User("root", "Root", is_admin=True)
SSH = EndpointSpec("ep1", "router-1", EndpointProtocol.SSH)


def viewer(n: int) -> User:
    return User(f"viewer{n}", f"Viewer {n}")


def make_engine(settings, clock, tmp_path):
    """An engine whose endpoints are synthetic: the network is not what these tests test."""
    return Engine(settings, clock=clock, database_url=f"sqlite:///{tmp_path / 'audit.db'}",
                  connect=lambda start: SyntheticConnection(clock))


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def engine(tmp_path, clock):
    assert actor_threads() == []
    settings = load(env={}, engine={"grace_seconds": 30.0, "endpoint_retries": 2, "endpoint_backoff_seconds": 1.0})
    engine = make_engine(settings, clock, tmp_path).start()
    yield engine
    engine.stop()
    assert_nothing_left(engine)


def assert_nothing_left(engine):
    """After Engine.stop(): no worker or store thread, no actor registered on the pool, none
    waiting on its run queue."""
    assert actor_threads() == [], "an actor thread outlived Engine.stop()"
    assert engine.actor_pool.actors() == [], "an actor outlived Engine.stop()"
    assert engine.actor_pool.scheduled() == 0, "an actor is still scheduled after Engine.stop()"


def census(engine):
    """The engine's live actors by class: every actor started on its pool and not yet ended."""
    return Counter(ref.actor_class.__name__ for ref in engine.actor_pool.actors())


def tree(sessions=0, participants=0):
    """The census of a tree with `sessions` sessions and `participants` participants in all."""
    return Counter({"EngineSupervisor": 1, "SessionActor": sessions, "EndpointActor": sessions,
                    "ParticipantActor": participants}) - Counter()


@pytest.fixture
def connection(clock):
    return SyntheticConnection(clock)


@pytest.fixture
def session(engine, connection):
    controller = engine.open_session(SSH, ALICE, connection=connection)
    assert controller.sink.wait_for(lambda s: any(getattr(e, "state", None) == "active" for e in s.events))
    return controller


def wait_until(predicate, timeout=5.0):
    """Poll a condition that no sink reports (a connection's counters) until it holds or the
    bound passes. A bound on waiting for the actors, not a wait for time to pass."""
    done = threading.Event()
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        done.wait(0.001)
    return True


def audit_rows(engine):
    engine.flush_audit()
    with sa.create_engine(engine._database_url).connect() as db:
        rows = db.execute(sa.text("select kind, actor_name, detail from audit_events order by id")).all()
    return [(kind, actor, json.loads(detail) if detail else {}) for kind, actor, detail in rows]


def kinds(engine):
    return [row[0] for row in audit_rows(engine)]
