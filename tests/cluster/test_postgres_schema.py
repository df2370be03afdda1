"""The schema on PostgreSQL: a plain ``postgresql://`` URL means psycopg 3, a new database is
migrated to the newest revision, and nodes opening it at once migrate it once (the advisory
lock of engine/migrate.py)."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from dashboard.repositories import tables as dashboard_tables
from engine import migrate
from engine.db import ENGINE_MIGRATIONS, ENGINE_VERSION_TABLE, database_url, make_engine, metadata

pytestmark = pytest.mark.postgres


def test_a_plain_postgresql_url_uses_psycopg():
    assert database_url("postgresql://u@h:5/db").drivername == "postgresql+psycopg"
    assert database_url("postgres://u@h:5/db").drivername == "postgresql+psycopg"
    assert database_url("postgresql+psycopg://u@h/db").drivername == "postgresql+psycopg"
    assert database_url("sqlite:///x.db").drivername == "sqlite"


def test_nodes_opening_a_new_database_at_once_migrate_it_once(postgres_url):
    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    applied: list[list[str]] = []
    errors: list[BaseException] = []
    go = threading.Barrier(4)

    def open_it() -> None:
        try:
            go.wait()
            db = make_engine(plain, create=False)
            try:
                applied.append(migrate.upgrade(db, ENGINE_MIGRATIONS, ENGINE_VERSION_TABLE)
                               + migrate.upgrade(db, dashboard_tables.MIGRATIONS, dashboard_tables.VERSION_TABLE))
            finally:
                db.dispose()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    heads = [migrate.head(ENGINE_MIGRATIONS), migrate.head(dashboard_tables.MIGRATIONS)]
    # one node applied every revision of both chains, up to their heads; the three others none
    quiet, migrated = [a for a in applied if not a], [a for a in applied if a]
    assert len(quiet) == 3 and len(migrated) == 1
    assert migrated[0][-1] == heads[1] and heads[0] in migrated[0]
    assert len(migrated[0]) == len(set(migrated[0]))
    db = make_engine(plain)
    try:
        assert db.dialect.driver == "psycopg"
        names = set(sa.inspect(db).get_table_names())
        assert set(metadata.tables) | set(dashboard_tables.metadata.tables) <= names
        assert migrate.current(db, ENGINE_VERSION_TABLE) == heads[0]
    finally:
        db.dispose()
