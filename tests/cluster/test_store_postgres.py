"""The audit store's, the chain's and the nodes' own tests (tests/unit/test_store.py,
test_audit_chain.py, test_nodes.py: claims, heartbeats, orphaned sessions), run again on
PostgreSQL: the same code, the same assertions, on a fresh database of the throwaway server
(tests/fixtures/postgres.py) for each test."""

from __future__ import annotations

import concurrent.futures

import pytest

from engine.audit import verify
from engine.messages import AuditEvent, Flush
from tests.unit.test_audit_chain import *  # noqa: F401,F403  (collected here again, on PostgreSQL)
from tests.unit.test_nodes import *  # noqa: F401,F403
from tests.unit.test_store import *  # noqa: F401,F403
from tests.unit.test_store import BOB, write_some

pytestmark = pytest.mark.postgres


@pytest.fixture
def url(postgres_url):
    return postgres_url


# Its size measures SQLite's batching; what it checks of the rows and the chain the other tests
# check here, and test_audit_chain_concurrent.py with two writers.
del test_ten_thousand_events  # noqa: F821


def test_verify_while_the_store_writes(url, start_store):  # noqa: F811
    """The head and the rows are read from one snapshot (REPEATABLE READ on PostgreSQL): rows
    committed meanwhile are not mistaken for a broken head. Smaller than the SQLite test."""
    ref = start_store(url)
    write_some(ref, 10)
    for i in range(3_000):
        ref.tell(AuditEvent.make("input_refused", float(i), "s1", BOB, size=i))
    done = concurrent.futures.Future()
    ref.tell(Flush(done.set_result))
    reports = [verify(url)]
    while not done.done():
        reports.append(verify(url))
    assert [r for r in reports if not r.ok] == []
    assert verify(url).rows == 3_010
