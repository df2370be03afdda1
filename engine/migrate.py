"""Schema migrations: bring a database's tables up to date with Alembic, safely from any number
of processes at once.

Each floor that owns tables owns their migrations: the engine's (the audit log and the nodes)
are in engine/migrations/versions, the dashboard's (users, endpoints, the access model) in
dashboard/migrations/versions. Each set is an Alembic revision chain with its own version table
(``engine_schema_version``, ``dashboard_schema_version``), so neither floor needs to know the
other's revisions. `upgrade` is called wherever tables used to be created: every process that
opens the database (a gateway, `cosession admin`, a test) brings it to the newest revision
before it reads or writes anything; there is no separate step to forget.

The first revision of each chain (the baseline) also adopts a database made before migrations
existed: it creates only the tables and columns that are missing, then the version table records
the baseline, and later revisions run as on any database.

Concurrency: the whole upgrade, version check included, runs in one transaction that first takes
the database's migration lock: on PostgreSQL a transaction-level advisory lock
(``pg_advisory_xact_lock``; PostgreSQL's DDL is transactional), on SQLite the write lock
(``BEGIN IMMEDIATE``, waiting up to the busy timeout). A second process waits for the first,
then finds the schema at its newest revision and does nothing; a failed upgrade leaves nothing
half-done.
"""

from __future__ import annotations

import functools
import logging
from importlib import resources
from typing import Any

import sqlalchemy as sa
from alembic import op
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError

log = logging.getLogger(__name__)

# pg_advisory_xact_lock's key for schema migrations: any constant the application uses for
# nothing else ("cosession" as bytes, folded into a signed 64-bit integer).
_MIGRATION_LOCK = int.from_bytes(b"cosessio", "big") - 2**63


class SchemaError(RuntimeError):
    """The database's schema cannot be brought up to date (for example it was migrated by a
    newer cosession, whose revisions this one does not know)."""


@functools.cache
def _scripts(package: str) -> ScriptDirectory:
    """The revision chain in `package`'s ``versions`` directory (loaded once per process)."""
    return ScriptDirectory(str(resources.files(package)))


def upgrade(engine: sa.Engine, package: str, version_table: str) -> list[str]:
    """Apply the revisions of `package` (e.g. ``engine.migrations``) that the database at
    `engine` has not had yet, recording them in `version_table`. Returns the revisions applied
    (none when it was up to date). Blocking; raises `SchemaError` for a schema it cannot
    upgrade."""
    scripts = _scripts(package)
    applied: list[str] = []

    def steps(current: Any, _context: Any) -> Any:
        try:
            todo = scripts._upgrade_revs("head", current)
        except CommandError as exc:
            raise SchemaError(f"the database's {version_table} names revision {current!r}, which this "
                              f"cosession does not know (was it migrated by a newer version?): {exc}") from exc
        applied.extend(step.revision.revision for step in todo)
        return todo

    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            # The first statement of the transaction takes the write lock: pysqlite begins no
            # transaction of its own before a statement once one is open.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif engine.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK)))
        try:
            context = MigrationContext.configure(conn, opts={"version_table": version_table, "fn": steps})
            with Operations.context(context):
                context.run_migrations()
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
    if applied:
        log.info("migrated the database's %s schema: %s", package.partition(".")[0], ", ".join(applied))
    return applied


def current(engine: sa.Engine, version_table: str) -> str | None:
    """The revision the database's `version_table` records (None: not migrated yet)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn, opts={"version_table": version_table}).get_current_revision()


def head(package: str) -> str | None:
    """The newest revision of `package`'s chain."""
    return _scripts(package).get_current_head()


def adopt(tables: sa.MetaData) -> None:
    """For a baseline revision (inside `upgrade`): create `tables`' missing tables, and add to an
    existing one the columns and indexes it lacks, as a database made before migrations may.
    Such a column must be nullable: the rows already there read it as NULL."""
    conn = op.get_bind()
    inspector = sa.inspect(conn)
    for table in tables.sorted_tables:
        if not inspector.has_table(table.name):
            table.create(conn)
            continue
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in present:
                if not column.nullable:
                    raise SchemaError(f"an older {table.name} table lacks the NOT NULL column {column.name}")
                op.add_column(table.name, sa.Column(column.name, column.type, nullable=True))
                log.info("added column %s.%s to an older database", table.name, column.name)
        indexes = {i["name"] for i in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexes:
                index.create(conn)
