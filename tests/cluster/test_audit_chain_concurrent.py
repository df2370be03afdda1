"""One audit chain, several writers, one PostgreSQL database: each append locks the chain's head
row, so concurrent writers never fork the chain nor need to re-chain a batch, and
`cosession audit verify` passes on the result (docs/cluster.md)."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time

import pytest
import sqlalchemy as sa

from engine.audit import verify
from engine.db import audit_events, audit_head
from engine.messages import AuditEvent, Flush
from engine.store import StoreActor
from engine.runtime import actor_threads

pytestmark = pytest.mark.postgres

EVENTS = 600  # per writer


def _flush(ref) -> int:
    answered = threading.Event()
    count = []
    ref.tell(Flush(lambda flushed: (count.append(flushed.rows), answered.set())))
    assert answered.wait(30), "the store did not answer a Flush"
    return count[0]


def test_two_stores_append_concurrently_to_one_chain(postgres_url, caplog):
    caplog.set_level(logging.WARNING, logger="engine.store")
    stores = [StoreActor.start(postgres_url) for _ in range(2)]
    try:
        go = threading.Event()

        def write(ref, name: str) -> None:
            go.wait()
            for n in range(EVENTS):
                ref.tell(AuditEvent("note", time.time(), f"s-{name}", name, name, (("n", n),)))

        writers = [threading.Thread(target=write, args=(ref, name)) for ref, name in zip(stores, "ab")]
        for thread in writers:
            thread.start()
        go.set()
        for thread in writers:
            thread.join()
        assert [_flush(ref) for ref in stores] == [EVENTS, EVENTS]
    finally:
        for ref in stores:
            ref.stop()
    assert actor_threads() == []
    # every row once, in one chain, and no batch had to be chained again
    report = verify(postgres_url)
    assert report.ok, report.problem
    assert report.rows == 2 * EVENTS
    assert not [r for r in caplog.records if "re-chaining" in r.getMessage()]
    db = sa.create_engine(postgres_url)
    try:
        with db.connect() as conn:
            per_writer = dict(conn.execute(sa.select(audit_events.c.actor_id, sa.func.count())
                                           .group_by(audit_events.c.actor_id)).all())
            head = conn.execute(sa.select(audit_head)).one()
    finally:
        db.dispose()
    assert per_writer == {"a": EVENTS, "b": EVENTS}
    assert head.rows == 2 * EVENTS and head.last_hash == report.head_hash


_WRITER = """
import sys, time, threading
from engine.messages import AuditEvent, Flush
from engine.store import StoreActor
url, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
ref = StoreActor.start(url)
print("ready", flush=True)
sys.stdin.readline()  # every writer starts at once
for n in range(count):
    ref.tell(AuditEvent("note", time.time(), None, name, name, (("n", n),)))
done = threading.Event()
ref.tell(Flush(lambda flushed: (print("committed", flushed.rows, flush=True), done.set())))
done.wait(60)
ref.stop()
"""


def test_two_processes_append_concurrently_and_the_cli_verifies_the_chain(postgres_url):
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, postgres_url, name, str(EVENTS)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for name in ("p1", "p2")]
    try:
        for writer in writers:  # both have their store, and the schema, before either writes
            assert writer.stdout.readline().strip() == "ready"
        for writer in writers:
            writer.stdin.write("go\n")
            writer.stdin.flush()
        outputs = [writer.communicate(timeout=120)[0] for writer in writers]
    finally:
        for writer in writers:
            if writer.poll() is None:
                writer.kill()
                writer.wait()
    assert [w.returncode for w in writers] == [0, 0]
    assert all(f"committed {EVENTS}" in out for out in outputs), outputs
    checked = subprocess.run([sys.executable, "-m", "cosession.cli", "audit", "verify", "--database",
                              postgres_url.replace("postgresql+psycopg://", "postgresql://")],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"audit log intact: {2 * EVENTS} event rows" in checked.stdout
