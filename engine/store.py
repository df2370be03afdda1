"""The audit store: the only writer of the audit log, and the read queries of the dashboard.

`StoreActor` receives `AuditSessionStarted`, `AuditSessionEnded`, `AuditEvent` and `Flush`
(engine/messages.py). Each of the first three becomes one hash-chained row of ``audit_events``
(see `engine.db.event_hash`); the first two also insert or complete a ``sessions`` row.
Repeated refusals are counted rather than written one by one (engine/refusals.py).

A store given a `Node` (engine/nodes.py) is that node's voice in the database: `ClaimNode`
makes its run the current one and ends the sessions an earlier run left open
(`gateway_restarted`), every session it starts records the node, and a heartbeat says the
node is alive until a clean stop says it stopped.

Rows are batched (a group commit): the store commits when its inbox has stayed empty for
`COMMIT_LINGER_SECONDS` (1 ms), when the oldest pending row has waited `COMMIT_MAX_DELAY_SECONDS`
(20 ms) while rows kept coming, when 256 rows are pending, on `Flush` (answered with `Flushed`
only once everything told before it is committed) and when it stops. Rows that trickle in (a
thousand sessions starting, each join one row) would otherwise be a transaction each, and the
store's commits held the GIL for 40 % of a 1,000-session start-up (docs/benchmarks.md). Both
delays are wall-clock time, not the engine's clock: they batch work, they are not rules of the
product. A row is written only once committed; until then it is held in memory, never dropped:

- a *transient* failure (the database is locked beyond the 30 s busy timeout, the connection
  is lost, the disk is full) is logged and the whole batch is retried with a backoff, from a
  fresh connection;
- any other failure of a batch (a value the database refuses) is logged, and the batch is
  written again one row per transaction, so that only the rows that fail on their own are
  dropped, each one logged with its content.

Several writers on one database (the nodes of a cluster, docs/cluster.md) keep one chain: on
PostgreSQL each batch's transaction first locks the chain's head row (``SELECT ... FOR
UPDATE``) and chains its rows onto the head it reads under that lock, so appends are serialised
and never re-done; on SQLite the write lock that the batch's first INSERT takes serialises them,
and the head update's condition notices a head that another process moved since this store last
wrote: the batch is then chained again onto the new head.

`AuditReader` runs the dashboard's sync queries on its own connections (from a worker thread,
never on the event loop).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Iterable

import pykka
import sqlalchemy as sa

from engine import nodes as node_rows
from engine.clock import Clock, SystemClock, Timer
from engine.db import (
    GENESIS_HASH, HEAD_ID, audit_events, audit_head, canonical_json, event_hash, make_engine, plain, sessions,
)
from engine.db import nodes as nodes_table  # `nodes` is AuditReader's method
from engine.errors import NodeInUse
from engine.metrics import EngineMetrics
from engine.messages import (
    AuditEvent, AuditSessionEnded, AuditSessionStarted, ClaimNode, EndReason, Flush, Flushed, NodeClaimed,
)
from engine.nodes import Node, live_clause, running_clause
from engine import recording_log
from engine.recording_log import RecordingInfo
from engine.refusals import RefusalCounter

log = logging.getLogger(__name__)

BATCH_ROWS = 256  # commit at least this often, even while messages keep coming
COMMIT_LINGER_SECONDS = 0.001  # an emptied inbox waits this long for rows that can share the commit
COMMIT_MAX_DELAY_SECONDS = 0.02  # while rows keep coming, none waits longer than this to be committed
_wall = time.monotonic  # the group commit's time (tests replace these two)
_linger = time.sleep
RETRY_FIRST_SECONDS = 0.05
RETRY_MAX_SECONDS = 5.0
_HEAD_RACES = 3  # how often to re-chain a batch when another writer moved the head


# The statements of every batch, built once: SQLAlchemy then finds their compiled form by
# identity instead of computing a cache key from a new statement's values for every row.
_INSERT_EVENT = audit_events.insert()
_INSERT_EVENT_RETURNING_ID = audit_events.insert().returning(audit_events.c.id)
_MOVE_HEAD = (audit_head.update()
              .where(audit_head.c.id == HEAD_ID, audit_head.c.last_hash == sa.bindparam("was_hash"),
                     audit_head.c.rows == sa.bindparam("was_rows"))
              .values(last_id=sa.bindparam("last_id"), last_hash=sa.bindparam("last_hash"),
                      rows=sa.bindparam("rows")))
_SESSION_EXISTS = sa.select(sessions.c.id).where(sessions.c.id == sa.bindparam("session_id"))
_END_SESSION = (sessions.update().where(sessions.c.id == sa.bindparam("session_id"), sessions.c.ended_at.is_(None))
                .values(ended_at=sa.bindparam("ended_at"), end_reason=sa.bindparam("end_reason"),
                        ended_by=sa.bindparam("ended_by")))


# --- pending rows ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Event:
    """An event row as it will be stored (and read back): plain values, detail as text."""

    at: float
    session_id: str | None
    kind: str
    actor_id: str | None
    actor_name: str | None
    detail: str


@dataclass(frozen=True, slots=True)
class _Op:
    event: _Event
    session_start: dict[str, Any] | None = None  # a sessions row to insert
    session_end: tuple[str, float, str, str | None] | None = None  # id, ended_at, reason, by


@dataclass(frozen=True, slots=True)
class _Head:
    last_id: int | None
    last_hash: str
    rows: int


@dataclass(frozen=True, slots=True)
class _RetryCommit:
    """Told by the store's own backoff timer."""


@dataclass(frozen=True, slots=True)
class _Heartbeat:
    """Told by the store's heartbeat timer: record that the node is alive."""


@dataclass(frozen=True, slots=True)
class _RefusalsDue:
    """Told by the store's timer when an interval of counted refusals ends."""


class _HeadMoved(Exception):
    """The chain's head in the database is not the one this store last wrote."""


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _event(kind: str, at: float, session_id: Any, actor_id: Any, actor_name: Any, detail: dict[str, Any]) -> _Event:
    return _Event(float(at), _text(session_id), str(kind), _text(actor_id), _text(actor_name),
                  canonical_json(plain(detail)))


def _op_for(message: Any, node: Node | None = None) -> _Op | None:
    """The row a message becomes. The ``sessions`` row is exactly what its chained events say
    (engine.audit.verify checks it): the start's columns are in ``session_started``'s actor and
    detail, the end's in ``session_ended``'s detail, and its time is the event's ``at`` unless
    the detail has ``last_seen_at`` (an end found after the fact)."""
    match message:
        case AuditEvent():
            return _Op(_event(message.kind, message.at, message.session_id, message.actor_id,
                              message.actor_name, dict(message.detail)))
        case AuditSessionStarted():
            row = {
                "id": str(message.session_id), "endpoint_id": str(message.endpoint_id),
                "endpoint_name": str(message.endpoint_name), "protocol": str(message.protocol),
                "controller_id": str(message.controller_id), "controller_name": str(message.controller_name),
                "started_at": float(message.started_at), "record": bool(message.record),
                "node_id": node.node_id if node else None, "node_incarnation": node.incarnation if node else None,
            }
            detail = {"endpoint_id": row["endpoint_id"], "endpoint_name": row["endpoint_name"],
                      "protocol": row["protocol"], "record": row["record"]}
            if node is not None:
                detail.update(node=node.node_id, node_incarnation=node.incarnation)
            return _Op(_event("session_started", message.started_at, message.session_id, message.controller_id,
                              message.controller_name, detail), session_start=row)
        case AuditSessionEnded():
            detail = {"reason": str(message.reason), "by": _text(message.by)}
            ended_at = float(message.ended_at)
            if message.last_seen_at is not None:
                ended_at = detail["last_seen_at"] = float(message.last_seen_at)
            return _Op(_event("session_ended", message.ended_at, message.session_id, None, message.by, detail),
                       session_end=(str(message.session_id), ended_at, str(message.reason), _text(message.by)))
    return None


def _chained(batch: list[_Op], prev: str) -> tuple[list[dict[str, Any]], str]:
    """The event rows of `batch` chained after the hash `prev`, and the last one's hash."""
    rows = []
    for op in batch:
        e = op.event
        digest = event_hash(prev, e.at, e.session_id, e.kind, e.actor_id, e.actor_name, e.detail)
        rows.append({"at": e.at, "session_id": e.session_id, "kind": e.kind, "actor_id": e.actor_id,
                     "actor_name": e.actor_name, "detail": e.detail, "prev_hash": prev, "hash": digest})
        prev = digest
    return rows, prev


def _transient(exc: BaseException) -> bool:
    """Worth retrying the same rows later: the database, not the rows, is the problem."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.DisconnectionError,
                            sa.exc.TimeoutError, OSError, _HeadMoved))


# --- the writer ----------------------------------------------------------------------------------


class StoreActor(pykka.ThreadingActor):
    """The only writer of the audit log. `StoreActor.start(url)` creates the database and its
    tables in the caller's thread, so that a database that cannot be used fails the start with
    its own error instead of a dead actor."""

    def __init__(self, database_url: str, clock: Clock | None = None, *, node: Node | None = None,
                 heartbeat_seconds: float = 10.0, refusal_interval: float = 0.0,
                 metrics: EngineMetrics | None = None) -> None:
        super().__init__()
        self._metrics = metrics if metrics is not None else EngineMetrics()
        self._url = database_url
        self._engine = make_engine(database_url)  # may raise: before anything needs stopping
        # Appenders that do not share this store's memory (other nodes) are serialised by a row
        # lock on the chain's head where the database has one; SQLite's write lock does it there.
        self._lock_head = self._engine.dialect.name != "sqlite"
        self._own_clock = clock is None  # a store started alone (tests, the CLI) keeps its own
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._node = node
        self._claimed = False
        self._heartbeat_seconds = heartbeat_seconds
        self._heartbeat_timer: Timer | None = None
        self._refusals = RefusalCounter(refusal_interval)
        self._refusals_timer: Timer | None = None
        self._conn: sa.Connection | None = None
        self._head: _Head | None = None
        self._pending: list[_Op] = []
        self._pending_since = 0.0  # time.monotonic() when the oldest pending row arrived
        self._flushes: list[Any] = []  # reply_to of Flush messages waiting for a commit
        self._committed = 0  # event rows committed by this store
        self._retry_delay = 0.0  # 0: not backing off
        self._retry_timer: Timer | None = None
        self._stopping = False
        self._notice: _Op | None = None  # written before the next batch (see _read_head)

    # --- lifecycle ------------------------------------------------------------------------------

    def on_start(self) -> None:
        # Nothing here may raise: pykka would stop the actor without on_failure, and every
        # later tell would fail. A database that is not there yet is retried like any other.
        try:
            self._connect()
        except Exception as exc:
            self._failed("cannot open the audit database", exc)
            self._schedule_retry()

    def on_stop(self) -> None:
        self._stopping = True
        self._cancel_retry()
        for timer in (self._heartbeat_timer, self._refusals_timer):
            if timer is not None:
                timer.cancel()
        self._pending.extend(_op_for(row) for row in self._refusals.flush())
        if self._pending or self._flushes:
            self._commit()
        if self._claimed:
            self._say_stopped()
        if self._pending:
            log.error("audit store stopped with %d rows it could not write: %s", len(self._pending),
                      "; ".join(_describe(op) for op in self._pending))
        for reply_to in self._flushes:  # unanswered, they would wait for ever; the count says the truth
            _reply(reply_to, Flushed(self._committed))
        self._flushes.clear()
        self._close()
        self._engine.dispose()
        if self._own_clock:
            self._clock.stop()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        # on_receive never raises (see below); this is for a failure of pykka's own handling.
        self.on_stop()

    # --- messages -------------------------------------------------------------------------------

    def on_receive(self, message: Any) -> None:
        try:
            self._receive(message)
        except Exception:  # the store outlives any message
            log.exception("audit store failed to handle %s", type(message).__name__)
        self._metrics.note_pending(len(self._pending))

    def _receive(self, message: Any) -> None:
        if isinstance(message, Flush):
            self._flushes.append(message.reply_to)
            self._pending.extend(_op_for(row) for row in self._refusals.flush())
            self._commit()
            return
        if isinstance(message, _RetryCommit):
            self._retry_timer = None
            self._commit()
            return
        if isinstance(message, _Heartbeat):
            self._beat()
            return
        if isinstance(message, ClaimNode):
            self._claim(message)
            return
        if isinstance(message, _RefusalsDue):
            self._refusals_timer = None
            rows = self._refusals.due(self._clock.now())
        elif isinstance(message, (AuditEvent, AuditSessionStarted, AuditSessionEnded)):
            rows = self._rows_for(message)
        else:
            log.warning("audit store ignored an unknown message: %r", type(message).__name__)
            rows = []
        for row in rows:
            try:
                op = _op_for(row, self._node)
            except Exception:
                log.exception("audit store could not encode %r; nothing written for it", row)
                continue
            if op is not None:
                if not self._pending:
                    self._pending_since = _wall()
                self._pending.append(op)
        self._schedule_refusals()
        if self._retry_timer is not None:
            return  # backing off: the timer commits (or Flush, or stop)
        if self._commit_due():
            self._commit()

    def _commit_due(self) -> bool:
        if not self._pending or len(self._pending) >= BATCH_ROWS:
            return True  # nothing to write (waiting flushes are answered), or a full batch
        if _wall() - self._pending_since >= COMMIT_MAX_DELAY_SECONDS:
            return True
        if not self.actor_inbox.empty():
            return False  # the next message comes at once; it decides
        _linger(COMMIT_LINGER_SECONDS)  # the store's own thread; the GIL is free meanwhile
        return self.actor_inbox.empty()

    def _rows_for(self, message: Any) -> list[Any]:
        """The messages to write for `message`, in order: counted refusals that must come before
        it (the same actor's, or its session's before its end), then it, unless it is counted."""
        now = self._clock.now()
        match message:
            case AuditEvent():
                return self._refusals.offer(message, now)
            case AuditSessionStarted():
                return [*self._refusals.close(actor=(message.controller_id, message.controller_name)), message]
            case AuditSessionEnded():
                return [*self._refusals.close(session_id=message.session_id), message]
        return [message]

    def _schedule_refusals(self) -> None:
        due = self._refusals.next_due()
        if due is None or self._stopping:
            return
        if self._refusals_timer is not None:
            if self._refusals_timer.when <= due:
                return
            self._refusals_timer.cancel()
        ref = self.actor_ref
        self._refusals_timer = self._clock.call_at(due, lambda: _tell_quietly(ref, _RefusalsDue()))

    # --- the node -------------------------------------------------------------------------------

    def _claim(self, claim: ClaimNode) -> None:
        """Make this run its node's current one; end what an earlier run left open."""
        if self._node is None:
            _reply(claim.reply_to, NodeInUse("this audit store was started without a node"))
            return
        now = self._clock.now()
        try:
            conn = self._connect()
            with conn.begin():
                orphans = node_rows.claim(conn, self._node, now, self._heartbeat_seconds)
        except Exception as exc:  # NodeInUse, or a database that fails: the engine does not start
            if not isinstance(exc, NodeInUse):
                self._failed("cannot claim this node's row", exc)
                self._close()
            _reply(claim.reply_to, exc)
            return
        self._claimed = True
        for orphan in orphans:
            self._pending.append(_op_for(AuditSessionEnded(
                orphan.session_id, now, EndReason.GATEWAY_RESTARTED.value, None, orphan.last_seen_at)))
        if orphans:
            log.warning("node %s: ended %d sessions that an earlier run left open (%s)", self._node.node_id,
                        len(orphans), EndReason.GATEWAY_RESTARTED.value)
            self._commit()
        self._schedule_heartbeat()
        _reply(claim.reply_to, NodeClaimed(self._node.node_id, tuple(o.session_id for o in orphans)))

    def _schedule_heartbeat(self) -> None:
        # The next beat is set when this one is written, not at a fixed rate: a ManualClock moved
        # by an hour fires one beat, not 360.
        if self._stopping:
            return
        ref = self.actor_ref
        self._heartbeat_timer = self._clock.call_later(self._heartbeat_seconds,
                                                       lambda: _tell_quietly(ref, _Heartbeat()))

    def _beat(self) -> None:
        self._heartbeat_timer = None
        assert self._node is not None
        try:
            conn = self._connect()
            now = self._clock.now()
            with conn.begin():
                mine = node_rows.heartbeat(conn, self._node, now)
                failed = node_rows.failed_sessions(conn, self._node) if mine else []
            if not mine:
                log.error("node %s: another run of this node took its row; its sessions here show as not "
                          "live. Give each gateway its own engine.node_id", self._node.node_id)
            for orphan in failed:  # another node's, dead: ended (and audited) by this survivor
                self._pending.append(_op_for(AuditSessionEnded(
                    orphan.session_id, now, EndReason.NODE_FAILED.value, None, orphan.last_seen_at)))
            if failed:
                log.warning("node %s: ended %d sessions of nodes that stopped beating (%s)", self._node.node_id,
                            len(failed), EndReason.NODE_FAILED.value)
                self._commit()
        except Exception as exc:
            self._failed("cannot record the node's heartbeat", exc)
            self._close()
        self._schedule_heartbeat()

    def _say_stopped(self) -> None:
        assert self._node is not None
        try:
            conn = self._connect()
            with conn.begin():
                node_rows.stopped(conn, self._node, self._clock.now())
        except Exception as exc:  # the next start finds the row not stopped, with a dead pid: the same
            self._failed("cannot record that the node stopped", exc)
        finally:
            node_rows.release(self._node)

    # --- writing --------------------------------------------------------------------------------

    def _commit(self) -> bool:
        """Write every pending row; answer waiting flushes once nothing is pending."""
        if self._pending:
            batch = self._pending
            try:
                self._write_with_head_retry(batch)
            except Exception as exc:
                if _transient(exc):
                    self._failed(f"cannot write {len(batch)} audit rows; keeping them to retry", exc)
                    self._close()
                    self._schedule_retry()
                    return False
                self._failed(f"a batch of {len(batch)} audit rows was refused; writing them one by one", exc)
                if not self._write_one_by_one(batch):
                    return False
            else:
                self._pending = []
        self._retry_delay = 0.0
        self._cancel_retry()
        flushes, self._flushes = self._flushes, []
        for reply_to in flushes:
            _reply(reply_to, Flushed(self._committed))
        return True

    def _write_one_by_one(self, batch: list[_Op]) -> bool:
        for index, op in enumerate(batch):
            try:
                self._write_with_head_retry([op])
            except Exception as exc:
                if _transient(exc):
                    self._pending = batch[index:]
                    self._failed(f"cannot write {len(self._pending)} audit rows; keeping them to retry", exc)
                    self._close()
                    self._schedule_retry()
                    return False
                log.error("audit row dropped, the database refused it: %s", _describe(op),
                          exc_info=(type(exc), exc, exc.__traceback__))
        self._pending = []
        return True

    def _write_with_head_retry(self, batch: list[_Op]) -> None:
        for attempt in range(_HEAD_RACES):
            try:
                self._write(batch)
                return
            except _HeadMoved:
                log.warning("another writer moved the audit chain's head; re-chaining %d rows", len(batch))
                self._head = None  # re-read
                if attempt == _HEAD_RACES - 1:
                    raise

    def _write(self, batch: list[_Op]) -> None:
        conn = self._connect()
        head = self._head
        assert head is not None
        if self._notice is not None:
            batch = [self._notice, *batch]
        with conn.begin():
            if self._lock_head:
                # PostgreSQL: the head row's lock serialises every appender (other nodes too)
                # from here to the commit, and the head read under it is the newest one:
                # chaining onto it cannot race. See docs/cluster.md.
                locked = conn.execute(sa.select(audit_head.c.last_id, audit_head.c.last_hash, audit_head.c.rows)
                                      .where(audit_head.c.id == HEAD_ID).with_for_update()).first()
                if locked is None:
                    raise _HeadMoved()  # removed meanwhile: _read_head rebuilds it
                head = _Head(*locked)
            rows, prev = _chained(batch, head.last_hash)
            # SQLite: the first statement writes, so SQLite takes its write lock (waiting for it
            # up to the busy timeout) before this transaction reads anything; the head update
            # below then finds the head this store last wrote, unless another process wrote since.
            if len(rows) > 1:  # a plain executemany: fast on every driver, whatever the batch size
                conn.execute(_INSERT_EVENT, rows[:-1])
            last_id = conn.execute(_INSERT_EVENT_RETURNING_ID, rows[-1]).scalar_one()
            for op in batch:
                if op.session_start is not None:
                    self._start_session(conn, op.session_start)
                elif op.session_end is not None:
                    self._end_session(conn, *op.session_end)
            moved = conn.execute(_MOVE_HEAD, {"was_hash": head.last_hash, "was_rows": head.rows, "last_id": last_id,
                                              "last_hash": prev, "rows": head.rows + len(rows)}).rowcount
            if moved != 1:
                raise _HeadMoved()
        self._notice = None
        self._head = _Head(last_id, prev, head.rows + len(rows))
        self._committed += len(rows)
        self._metrics.audit_rows_written.inc(len(rows))

    @staticmethod
    def _start_session(conn: sa.Connection, row: dict[str, Any]) -> None:
        exists = conn.execute(_SESSION_EXISTS, {"session_id": row["id"]}).first()
        if exists is None:
            conn.execute(sessions.insert(), row)
        else:  # told twice: the later start wins, an end already written stays
            log.warning("session %s started twice in the audit log", row["id"])
            conn.execute(sessions.update().where(sessions.c.id == row["id"])
                         .values(**{k: v for k, v in row.items() if k != "id"}))

    @staticmethod
    def _end_session(conn: sa.Connection, session_id: str, ended_at: float, reason: str, by: str | None) -> None:
        done = conn.execute(_END_SESSION, {"session_id": session_id, "ended_at": ended_at, "end_reason": reason,
                                           "ended_by": by}).rowcount
        if done != 1:  # the first end counts; the event row still records this one
            log.info("session %s: end (%s) not applied to the sessions row: unknown or already ended",
                     session_id, reason)

    # --- the connection and the head ------------------------------------------------------------

    def _connect(self) -> sa.Connection:
        if self._conn is None or self._conn.invalidated or self._conn.closed:
            self._close()
            self._conn = self._engine.connect()
        if self._head is None:
            self._head = self._read_head(self._conn)
        return self._conn

    def _read_head(self, conn: sa.Connection) -> _Head:
        """The chain's head as the database has it; created on a new database. A log whose head
        row is gone gets a new one from its last row, and an `audit_head_rebuilt` event says so."""
        try:
            with conn.begin():
                row = conn.execute(sa.select(audit_head).where(audit_head.c.id == HEAD_ID)).first()
                if row is not None:
                    return _Head(row.last_id, row.last_hash, row.rows)
                last = conn.execute(sa.select(audit_events.c.id, audit_events.c.hash)
                                    .order_by(audit_events.c.id.desc()).limit(1)).first()
                count = conn.execute(sa.select(sa.func.count()).select_from(audit_events)).scalar_one()
                head = _Head(last.id, last.hash, count) if last is not None else _Head(None, GENESIS_HASH, 0)
                conn.execute(audit_head.insert().values(id=HEAD_ID, last_id=head.last_id,
                                                        last_hash=head.last_hash, rows=head.rows))
        except sa.exc.IntegrityError:  # another writer created it first
            row = conn.execute(sa.select(audit_head).where(audit_head.c.id == HEAD_ID)).one()
            conn.rollback()
            return _Head(row.last_id, row.last_hash, row.rows)
        if last is not None:
            log.error("the audit log had %d event rows but no head row: rebuilt from row %d", count, last.id)
            self._notice = _Op(_event("audit_head_rebuilt", self._clock.now(), None, None, None,
                                      {"last_id": last.id, "rows": count}))
        return head

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                log.debug("closing the audit connection failed", exc_info=True)
            self._conn = None
            self._head = None  # re-read with the next connection

    # --- backoff --------------------------------------------------------------------------------

    def _schedule_retry(self) -> None:
        if self._stopping or self._retry_timer is not None:
            return
        self._retry_delay = min(RETRY_MAX_SECONDS, self._retry_delay * 2 or RETRY_FIRST_SECONDS)
        ref = self.actor_ref
        self._retry_timer = self._clock.call_later(self._retry_delay, lambda: _tell_quietly(ref, _RetryCommit()))

    def _cancel_retry(self) -> None:
        timer, self._retry_timer = self._retry_timer, None
        if timer is not None:
            timer.cancel()

    def _failed(self, what: str, exc: BaseException) -> None:
        log.error("%s (%d rows pending, %d committed): %s: %s", what, len(self._pending), self._committed,
                  type(exc).__name__, exc, exc_info=(type(exc), exc, exc.__traceback__))


def _tell_quietly(ref: Any, message: Any) -> None:
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        pass


def _reply(reply_to: Any, message: Any) -> None:
    try:
        reply_to(message)
    except Exception:
        log.exception("a Flush's reply_to failed")


def _describe(op: _Op) -> str:
    e = op.event
    return canonical_json({"at": e.at, "session_id": e.session_id, "kind": e.kind, "actor_id": e.actor_id,
                           "actor_name": e.actor_name, "detail": e.detail})


# --- the read side -------------------------------------------------------------------------------


def _session_dict(row: Any) -> dict[str, Any]:
    d = dict(row._mapping)
    d["record"] = bool(d["record"])
    d["live"] = bool(d["live"])
    return d


def _sessions_query() -> Any:
    return sa.select(sessions, live_clause().label("live"))


def _event_dict(row: Any) -> dict[str, Any]:
    d = dict(row._mapping)
    try:
        d["detail"] = json.loads(d["detail"]) if d["detail"] else {}
    except ValueError:
        d["detail"] = {"unreadable": d["detail"]}
    return d


def _kinds(kind: str | Iterable[str] | None) -> list[str] | None:
    if kind is None:
        return None
    return [kind] if isinstance(kind, str) else list(kind)


def _joined_by(who: str) -> Any:
    """The ids of the sessions that `who` (an id or a name) joined."""
    e = audit_events.c
    return sa.select(e.session_id).where(e.kind == "join", e.session_id.is_not(None),
                                         sa.or_(e.actor_id == who, e.actor_name == who))


class AuditReader:
    """Sync read queries over the audit log, for the dashboard. Blocking: call them from a
    worker thread (`trio.to_thread.run_sync`). Each call takes its own connection from this
    reader's pool; with SQLite's WAL, reading never waits for the store's writes.

    Rows are plain dicts. Times are wall-clock seconds (floats)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._engine = make_engine(url)

    def close(self) -> None:
        self._engine.dispose()

    def recording(self, session_id: str) -> RecordingInfo | None:
        """A recorded session's recording as the audit log tells it (engine.recording_log)."""
        with self._engine.connect() as conn:
            return recording_log.recording(conn, session_id)

    def sessions(self, live: bool | None = None, endpoint_id: str | None = None, user: str | None = None,
                 since: float | None = None, until: float | None = None, end_reason: str | None = None,
                 limit: int = 50, offset: int = 0,
                 visible_to: tuple[str, Iterable[str]] | None = None) -> tuple[list[dict[str, Any]], int]:
        """Sessions, newest first, and how many match in all.

        `live`: True for sessions running on a node now, False for the others: ended ones, and
        any whose node stopped running them without ending them (engine/nodes.py; such a row
        has ``live`` false and ``ended_at`` None until a node ends it). `user`: an id or a name
        that is the controller's or any participant's (the actor of a ``join`` event).
        `since`/`until`: sessions that were live at some time in [since, until).
        `visible_to=(user_id, endpoint_ids)`: only what that user may see: sessions on those
        endpoints, or that the user controlled or joined (None: everything, for administrators)."""
        s = sessions.c
        where = []
        if visible_to is not None:
            viewer_id, endpoint_ids = visible_to
            where.append(sa.or_(s.endpoint_id.in_(sorted(endpoint_ids)), s.controller_id == viewer_id,
                                s.id.in_(_joined_by(viewer_id))))
        if live is True:
            where.append(live_clause())
        elif live is False:
            where.append(sa.not_(live_clause()))
        if endpoint_id is not None:
            where.append(s.endpoint_id == endpoint_id)
        if end_reason is not None:
            where.append(s.end_reason == end_reason)
        if since is not None:
            where.append(sa.or_(s.ended_at.is_(None), s.ended_at >= since))
        if until is not None:
            where.append(s.started_at < until)
        if user is not None:
            where.append(sa.or_(s.controller_id == user, s.controller_name == user, s.id.in_(_joined_by(user))))
        query = _sessions_query().where(*where)
        with self._engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar_one()
            rows = conn.execute(query.order_by(s.started_at.desc(), s.id)
                                .limit(max(0, limit)).offset(max(0, offset))).all()
        return [_session_dict(r) for r in rows], total

    def session(self, id: str) -> dict[str, Any] | None:
        """One session, with ``participants``: everyone who joined it (from ``join`` events),
        in order of their first join: dicts of ``actor_id``, ``actor_name``, ``role``."""
        e = audit_events.c
        with self._engine.connect() as conn:
            row = conn.execute(_sessions_query().where(sessions.c.id == id)).first()
            if row is None:
                return None
            joins = conn.execute(sa.select(e.actor_id, e.actor_name, e.detail)
                                 .where(e.session_id == id, e.kind == "join").order_by(e.id)).all()
        result = _session_dict(row)
        seen: dict[tuple[Any, Any], dict[str, Any]] = {}
        for actor_id, actor_name, detail in joins:
            key = (actor_id, actor_name)
            if key not in seen:
                try:
                    role = json.loads(detail).get("role")
                except (ValueError, AttributeError):
                    role = None
                seen[key] = {"actor_id": actor_id, "actor_name": actor_name, "role": role}
        result["participants"] = list(seen.values())
        return result

    def events(self, session_id: str | None = None, kind: str | Iterable[str] | None = None,
               actor: str | None = None, since: float | None = None, until: float | None = None,
               limit: int = 100, offset: int = 0, newest_first: bool = False) -> tuple[list[dict[str, Any]], int]:
        """Event rows in the order they were written (or newest first), and how many match in
        all. `kind`: one kind or several. `actor`: an id or a name. `since`/`until`: ``at`` in
        [since, until). ``detail`` is returned parsed."""
        e = audit_events.c
        where = []
        if session_id is not None:
            where.append(e.session_id == session_id)
        kinds = _kinds(kind)
        if kinds is not None:
            where.append(e.kind.in_(kinds))
        if actor is not None:
            where.append(sa.or_(e.actor_id == actor, e.actor_name == actor))
        if since is not None:
            where.append(e.at >= since)
        if until is not None:
            where.append(e.at < until)
        with self._engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(audit_events).where(*where)).scalar_one()
            rows = conn.execute(sa.select(audit_events).where(*where)
                                .order_by(e.id.desc() if newest_first else e.id)
                                .limit(max(0, limit)).offset(max(0, offset))).all()
        return [_event_dict(r) for r in rows], total

    def nodes(self) -> list[dict[str, Any]]:
        """Every node that ever wrote to this database, by name: its ``nodes`` row, with
        ``running`` (see engine/nodes.py: not stopped, and its heartbeat fresh) and
        ``live_sessions``, how many sessions of its current run are live."""
        n, s = nodes_table.c, sessions.c
        live = (sa.select(sa.func.count()).select_from(sessions)
                .where(s.node_id == n.node_id, s.node_incarnation == n.incarnation, live_clause())
                .scalar_subquery())
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(nodes_table, running_clause().label("running"),
                                          live.label("live_sessions")).order_by(n.node_id)).all()
        return [dict(r._mapping, running=bool(r.running)) for r in rows]

    def kinds(self) -> list[str]:
        """The distinct event kinds in the log, sorted, in one index walk per kind (a loose index
        scan: a few milliseconds whatever the size of the log)."""
        kind = audit_events.c.kind
        seed = sa.select(sa.func.min(kind).label("kind")).cte("present_kinds", recursive=True)
        following = sa.select(sa.func.min(kind)).where(kind > seed.c.kind).scalar_subquery()
        kinds = seed.union_all(sa.select(following.label("kind")).where(seed.c.kind.is_not(None)))
        with self._engine.connect() as conn:
            return list(conn.execute(sa.select(kinds.c.kind).where(kinds.c.kind.is_not(None))).scalars())
