"""Schema migrations (engine/migrate.py) on SQLite, the default: a fresh data directory gets
every table and its version, an existing database made before migrations is adopted with its
rows kept, and processes that open one database at once migrate it once. The same on
PostgreSQL: tests/cluster/test_postgres_schema.py."""

from __future__ import annotations

import threading

import pytest

import sqlalchemy as sa

from dashboard.repositories import tables as dashboard_tables
from engine import migrate
from engine.db import ENGINE_MIGRATIONS, ENGINE_VERSION_TABLE, make_engine, metadata


def _columns(db: sa.Engine, table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(db).get_columns(table)}


def test_a_fresh_database_gets_every_table_at_the_newest_revision(tmp_path):
    db = make_engine(f"sqlite:///{tmp_path / 'fresh' / 'cosession.db'}")
    try:
        dashboard_tables.create(db)
        names = set(sa.inspect(db).get_table_names())
        assert set(metadata.tables) | set(dashboard_tables.metadata.tables) <= names
        assert migrate.current(db, ENGINE_VERSION_TABLE) == migrate.head(ENGINE_MIGRATIONS)
        assert migrate.current(db, dashboard_tables.VERSION_TABLE) == migrate.head(dashboard_tables.MIGRATIONS)
        # opening it again applies nothing
        assert migrate.upgrade(db, ENGINE_MIGRATIONS, ENGINE_VERSION_TABLE) == []
    finally:
        db.dispose()


def test_a_database_made_before_migrations_is_adopted_with_its_rows(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = sa.MetaData()
    sa.Table("sessions", old, *(sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
                                for c in metadata.tables["sessions"].columns
                                if c.name not in ("node_id", "node_incarnation")))
    for name in ("audit_events", "audit_head"):
        metadata.tables[name].to_metadata(old)
    db = sa.create_engine(url)
    old.create_all(db)
    with db.begin() as conn:
        conn.execute(old.tables["sessions"].insert().values(
            id="s1", endpoint_id="e", endpoint_name="E", protocol="ssh", controller_id="u", controller_name="U",
            started_at=1.0, record=False))
    db.dispose()

    db = make_engine(url)
    try:
        assert {"node_id", "node_incarnation"} <= _columns(db, "sessions")
        assert "nodes" in sa.inspect(db).get_table_names()
        assert "ix_sessions_node_live" in {i["name"] for i in sa.inspect(db).get_indexes("sessions")}
        with db.connect() as conn:
            assert conn.execute(sa.text("select id, node_id from sessions")).all() == [("s1", None)]
        assert migrate.current(db, ENGINE_VERSION_TABLE) == migrate.head(ENGINE_MIGRATIONS)
    finally:
        db.dispose()


def test_processes_opening_a_new_database_at_once_migrate_it_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'raced.db'}"
    applied: list[list[str]] = []
    errors: list[BaseException] = []
    go = threading.Barrier(4)

    def open_it() -> None:
        try:
            go.wait()
            db = sa.create_engine(url, connect_args={"timeout": 30})
            try:
                applied.append(migrate.upgrade(db, ENGINE_MIGRATIONS, ENGINE_VERSION_TABLE))
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
    assert sorted(applied, key=len) == [[], [], [], [migrate.head(ENGINE_MIGRATIONS)]]


def test_a_database_migrated_by_a_newer_cosession_is_refused_not_used(tmp_path):
    url = f"sqlite:///{tmp_path / 'newer.db'}"
    make_engine(url).dispose()
    db = sa.create_engine(url)
    with db.begin() as conn:
        conn.execute(sa.text(f"UPDATE {ENGINE_VERSION_TABLE} SET version_num = 'e9999'"))
    db.dispose()
    with pytest.raises(migrate.SchemaError, match="names revision .*e9999.*newer version"):
        make_engine(url)
