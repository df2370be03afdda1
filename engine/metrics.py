"""What the engine counts for the gateway's ``/metrics`` (docs/operations.md, "Metrics").

`EngineMetrics` holds the engine's Prometheus metrics on a registry that its owner gives (the
application's, one per `Engine`: never prometheus-client's process-wide default, which tests
running several engines in one process would share). The actors count where things happen, and
only things that are rare next to frames: an endpoint's retry or failure, a participant leaving
a session and why, a session's end and why, the store's committed rows. Nothing on the path of a
frame takes a lock here.

The store's lag is read when the registry is collected: the store writes, from its own thread,
how many rows it holds uncommitted and since when (`note_pending`); a scrape reads the two
values (a float and an int, each replaced whole).
"""

from __future__ import annotations

import time
from typing import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# Reasons a participant leaves a live session (engine/actors/session.py, ParticipantLeft), shown
# at 0 before the first of each; a reason not listed still counts, from its first occurrence.
LEAVE_REASONS = ("left", "disconnected", "ejected", "failed", "stalled")


class EngineMetrics(Collector):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.endpoint_retries = Counter(
            "cosession_endpoint_retries", "Endpoint connections reopened after a retryable failure",
            ["protocol"], registry=r)
        self.endpoint_failures = Counter(
            "cosession_endpoint_failures", "Sessions whose endpoint connection failed for good (endpoint_failed)",
            ["protocol"], registry=r)
        self.participants_removed = Counter(
            "cosession_participants_removed",
            "Participants removed from a live session, by reason (stalled: a client that stopped reading)",
            ["reason"], registry=r)
        for reason in LEAVE_REASONS:
            self.participants_removed.labels(reason)
        self.sessions_ended = Counter(
            "cosession_sessions_ended", "Sessions ended, by end reason", ["protocol", "reason"], registry=r)
        self.audit_rows_written = Counter(
            "cosession_audit_rows_written", "Audit rows committed to the database by this process", registry=r)
        self._pending_rows = 0
        self._pending_since: float | None = None  # time.monotonic() of the oldest uncommitted row
        r.register(self)

    # --- written by the store's thread ---------------------------------------------------------

    def note_pending(self, rows: int) -> None:
        """The store holds `rows` uncommitted rows now (0 after a commit)."""
        if rows and self._pending_since is None:
            self._pending_since = time.monotonic()
        elif not rows:
            self._pending_since = None
        self._pending_rows = rows

    # --- read at scrape time ---------------------------------------------------------------------

    def collect(self) -> Iterator[GaugeMetricFamily]:
        since = self._pending_since
        yield GaugeMetricFamily("cosession_audit_rows_pending",
                                "Audit rows received by the store and not yet committed", value=self._pending_rows)
        yield GaugeMetricFamily("cosession_audit_store_lag_seconds",
                                "How long the oldest uncommitted audit row has waited (0: none waits)",
                                value=0.0 if since is None else max(0.0, time.monotonic() - since))

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())  # collected on every scrape, never at registration
