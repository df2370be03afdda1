"""The engine's schema (the audit log and the nodes), in SQLAlchemy Core, and the database engines.

The same definitions run on SQLite (the default, a file in the data directory) and on
PostgreSQL (any SQLAlchemy URL): queries elsewhere use Core constructs only, never
SQLite-only SQL.

The audit log is three tables, and the nodes that write it a fourth:

- ``sessions``: one row per session, inserted when it starts, completed when it ends: a
  projection of the chained ``session_started`` and ``session_ended`` events, which
  `engine.audit.verify` checks row by row;
- ``audit_events``: the hash-chained event log (see `event_hash`), append-only;
- ``audit_head``: one row (id 1) naming the chain's last event and the number of events,
  updated in the same transaction as the events. It is how `engine.audit.verify` notices that
  the newest rows were removed, which the chain alone cannot show;
- ``nodes``: one row per gateway node (engine/nodes.py): which run of it is the current one
  and when it was last seen alive (a heartbeat), so that the sessions a node owned and no longer
  runs can be told apart from live ones.

`engine.store.StoreActor` is the only writer of these tables. The dashboard keeps its own tables
(users, endpoints, the access model) in the same database, on its own `MetaData`
(dashboard/repositories/tables.py). Each floor's schema changes are Alembic revisions
(engine/migrations, dashboard/migrations), applied by engine/migrate.py when a process opens the
database: `make_engine` applies the engine's.
"""

from __future__ import annotations

import hashlib
import json
import enum
import logging
import math
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from engine import migrate

log = logging.getLogger(__name__)

metadata = sa.MetaData()

# --- the audit log ---------------------------------------------------------------------------

sessions = sa.Table(
    "sessions", metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("endpoint_id", sa.Text, nullable=False),
    sa.Column("endpoint_name", sa.Text, nullable=False),
    sa.Column("protocol", sa.Text, nullable=False),
    sa.Column("controller_id", sa.Text, nullable=False),
    sa.Column("controller_name", sa.Text, nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),  # wall-clock seconds since the epoch
    sa.Column("ended_at", sa.Float, nullable=True),  # NULL while the session is live
    sa.Column("end_reason", sa.Text, nullable=True),  # an engine.messages.EndReason value
    sa.Column("ended_by", sa.Text, nullable=True),  # user name of whoever ended it, if anyone
    sa.Column("record", sa.Boolean, nullable=False, default=False),
    # the node that runs it, and which run of that node (engine/nodes.py); NULL in rows written
    # before nodes were recorded, and by a store that was given no node
    sa.Column("node_id", sa.Text, nullable=True),
    sa.Column("node_incarnation", sa.Text, nullable=True),
    sa.Index("ix_sessions_started_at", "started_at"),
    sa.Index("ix_sessions_ended_at", "ended_at"),
    sa.Index("ix_sessions_endpoint_id", "endpoint_id"),
    sa.Index("ix_sessions_controller_id", "controller_id"),
    sa.Index("ix_sessions_controller_name", "controller_name"),
    sa.Index("ix_sessions_node_live", "node_id", "ended_at"),
)

audit_events = sa.Table(
    "audit_events", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("session_id", sa.Text, nullable=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("actor_id", sa.Text, nullable=True),
    sa.Column("actor_name", sa.Text, nullable=True),
    sa.Column("detail", sa.Text, nullable=False),  # canonical JSON object (`canonical_json`)
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Index("ix_audit_events_session_id", "session_id", "id"),
    sa.Index("ix_audit_events_kind", "kind", "id"),
    sa.Index("ix_audit_events_at", "at"),
    sa.Index("ix_audit_events_actor_id", "actor_id"),
    sa.Index("ix_audit_events_actor_name", "actor_name"),
    # SQLite: never reuse the id of a removed last row (AUTOINCREMENT)
    sqlite_autoincrement=True,
)

audit_head = sa.Table(
    "audit_head", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),  # always 1
    sa.Column("last_id", sa.Integer, nullable=True),  # NULL: no event yet
    sa.Column("last_hash", sa.String(64), nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),  # event rows in the chain
)

HEAD_ID = 1

nodes = sa.Table(
    "nodes", metadata,
    sa.Column("node_id", sa.Text, primary_key=True),  # engine.node_id, by default the host name
    sa.Column("incarnation", sa.Text, nullable=False),  # one per start of the node's engine
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("last_seen_at", sa.Float, nullable=False),  # the heartbeat: written every heartbeat_seconds
    sa.Column("heartbeat_seconds", sa.Float, nullable=False),
    sa.Column("stopped_at", sa.Float, nullable=True),  # set by a clean stop; NULL while running or after a crash
)

# --- the hash chain ----------------------------------------------------------------------------

GENESIS_HASH = "0" * 64  # the prev_hash of the first event


def plain(value: Any) -> Any:
    """`value` as plain JSON values only, deterministically. Bytes become their length (a
    terminal's bytes may hold a password), unknown objects their type name (their repr might
    hold a secret), non-finite floats a string."""
    if isinstance(value, enum.Enum):
        return plain(value.value)
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else repr(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((plain(v) for v in value), key=canonical_json)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    return f"<{type(value).__name__}>"


def canonical_json(value: Any) -> str:
    """One text for one value: sorted keys, no spaces, ASCII only, floats by `repr` (which
    round-trips), no NaN. `value` must already be plain (see `plain`)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def event_hash(prev_hash: str, at: float, session_id: str | None, kind: str, actor_id: str | None,
               actor_name: str | None, detail: str) -> str:
    """sha256 hex of ``prev_hash`` followed by the canonical JSON array
    ``[at, session_id, kind, actor_id, actor_name, detail]``, where ``detail`` is the row's
    stored canonical JSON text (a string inside the array). Exactly the values stored in the
    row, as read back, so that anyone can recompute it."""
    payload = canonical_json([float(at), session_id, kind, actor_id, actor_name, detail])
    return hashlib.sha256((prev_hash + payload).encode("ascii")).hexdigest()


# --- engines -------------------------------------------------------------------------------------


def is_sqlite(url: str | sa.URL) -> bool:
    return sa.make_url(url).get_backend_name() == "sqlite"


def sqlite_path(url: str | sa.URL) -> Path | None:
    """The file of a SQLite URL; None for an in-memory database or another backend."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database).expanduser()


def database_url(url: str | sa.URL) -> sa.URL:
    """`url` with its driver: ``postgresql://`` (and ``postgres://``, as libpq spells it) means
    psycopg 3, the driver cosession installs; SQLAlchemy alone would pick psycopg2."""
    if isinstance(url, str) and url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    parsed = sa.make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


ENGINE_MIGRATIONS = "engine.migrations"
ENGINE_VERSION_TABLE = "engine_schema_version"
CONNECT_TIMEOUT_SECONDS = 5  # PostgreSQL: how long opening a connection may take


def make_engine(url: str | sa.URL, *, create: bool = True) -> sa.Engine:
    """A SQLAlchemy engine for `url`, its schema migrated to the newest revision (unless
    `create` is false; engine/migrate.py).

    SQLite: the file's parent directories are created, the journal is WAL (readers never block
    the writer), and a connection waits up to 30 s for a lock instead of failing at once
    (usable from any thread: each thread still takes its own connection from the pool; an
    in-memory database is one connection that every thread shares)."""
    url = database_url(url)
    if is_sqlite(url):
        path = sqlite_path(url)
        if path is not None and create:
            path.parent.mkdir(parents=True, exist_ok=True)
        in_memory = (sa.make_url(url).database or "") in ("", ":memory:")
        # An in-memory database lives in one connection: every thread must share that one
        # (the default pool gives each thread its own, empty, database).
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                                  **({"poolclass": sa.pool.StaticPool} if in_memory else {}))

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("PRAGMA busy_timeout = 30000")
                if path is not None:
                    cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute("PRAGMA foreign_keys = ON")
            finally:
                cursor.close()
    else:
        # pool_pre_ping: a connection the server dropped (a restart) is replaced, not used.
        # connect_timeout: an unreachable server is an error within seconds, not minutes.
        engine = sa.create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS})
    if create:
        try:
            upgrade_schema(engine)
        except BaseException:
            engine.dispose()  # unreachable, or a schema it cannot migrate: nothing left open
            raise
    return engine


def upgrade_schema(engine: sa.Engine) -> None:
    """Bring the engine's tables (the audit log and the nodes) to the newest revision."""
    migrate.upgrade(engine, ENGINE_MIGRATIONS, ENGINE_VERSION_TABLE)
