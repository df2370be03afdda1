"""`cosession serve` on PostgreSQL as real processes: two nodes on one database (one given it
with --database, the other in its config file) share the accounts, each records itself in
``nodes``, and `cosession cluster status` lists both running; `cosession audit verify
--database` passes afterwards; an unreachable database is a clear refusal to start."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys

import httpx
import pytest
import sqlalchemy as sa

from engine.db import nodes
from tests.dashboard.test_serve import ROOT, Served

pytestmark = pytest.mark.postgres


def _plain(url: str) -> str:
    """The URL as an operator writes it (the driver is cosession's business)."""
    return url.replace("postgresql+psycopg://", "postgresql://")


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("COSESSION_")}


def test_two_nodes_share_one_database_and_its_audit_chain(tmp_path, postgres_url):
    keys = (f'secret_key = "{"k" * 32}"\n'
            f'credential_key = "{base64.b64encode(bytes(range(32))).decode()}"\n')
    first_config = tmp_path / "a.toml"
    first_config.write_text(f'[engine]\nnode_id = "node-a"\n[security]\n{keys}')
    second_config = tmp_path / "b.toml"
    second_config.write_text(f'[engine]\nnode_id = "node-b"\ndatabase_url = "{_plain(postgres_url)}"\n'
                             f'[security]\n{keys}')
    first = Served(tmp_path / "a", "--no-demo", "--config", str(first_config), "--database", _plain(postgres_url))
    try:
        password = first.passwords()["admin"]
        second = Served(tmp_path / "b", "--no-demo", "--config", str(second_config))
        try:
            assert second.passwords() == {}  # the accounts are the database's, made by the first node
            for node in (first, second):
                with httpx.Client(base_url=node.url) as client:
                    answer = client.post("/api/login", json={"name": "admin", "password": password})
                    assert answer.status_code == 200, answer.text
            status = subprocess.run([sys.executable, "-m", "cosession.cli", "cluster", "status", "--json",
                                     "--database", _plain(postgres_url)], cwd=ROOT, env=_clean_env(),
                                    capture_output=True, text=True, timeout=60)
            assert status.returncode == 0, status.stderr
            listed = {n["node_id"]: (n["state"], n["live_sessions"]) for n in json.loads(status.stdout)["nodes"]}
            assert listed == {"node-a": ("running", 0), "node-b": ("running", 0)}
        finally:
            code, _, err = second.stop(signal.SIGTERM)
        assert code == 0 and "Traceback" not in err, err
    finally:
        code, _, err = first.stop(signal.SIGINT)
    assert code == 0 and "Traceback" not in err, err

    db = sa.create_engine(postgres_url)
    try:
        with db.connect() as conn:
            rows = conn.execute(sa.select(nodes.c.node_id, nodes.c.stopped_at).order_by(nodes.c.node_id)).all()
    finally:
        db.dispose()
    assert [r.node_id for r in rows] == ["node-a", "node-b"] and all(r.stopped_at for r in rows)
    checked = subprocess.run([sys.executable, "-m", "cosession.cli", "audit", "verify", "--database",
                              _plain(postgres_url)], cwd=ROOT, env=_clean_env(), capture_output=True, text=True,
                             timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "audit log intact" in checked.stdout


def test_an_unreachable_database_is_a_clear_refusal_to_start(tmp_path):
    with socket.socket() as closed:  # a port that nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    url = f"postgresql://postgres:hunter2-secret@127.0.0.1:{port}/cosession"
    result = subprocess.run([sys.executable, "-m", "cosession.cli", "serve", "--port", "0", "--no-demo",
                             "--data-dir", str(tmp_path / "data"), "--database", url],
                            cwd=ROOT, env=_clean_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"cosession serve: cannot open the database postgresql://postgres:***@127.0.0.1:{port}/cosession" \
        in result.stderr, result.stderr
    assert "Connection refused" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
