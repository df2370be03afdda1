"""`cosession audit verify`, run as a separate process the way an operator runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from engine.db import audit_events
from tests.unit.test_store import execute, start_store, write_some  # noqa: F401

REPO = Path(__file__).resolve().parents[2]


def cosession(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSESSION_")}
    return subprocess.run([sys.executable, "-m", "cosession.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def make_log(data_dir: Path, start_store, n=10) -> str:  # noqa: F811
    url = f"sqlite:///{data_dir / 'cosession.db'}"  # where settings put it for --data-dir
    ref = start_store(url)
    write_some(ref, n)
    ref.stop(block=True)
    return url


def test_intact(tmp_path, start_store):  # noqa: F811
    make_log(tmp_path, start_store)
    done = cosession("audit", "verify", "--data-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "audit log intact: 10 event rows"
    assert "head: row 10 hash " in done.stdout


def test_altered_row_is_named(tmp_path, start_store):  # noqa: F811
    url = make_log(tmp_path, start_store)
    execute(url, audit_events.update().where(audit_events.c.id == 3).values(detail='{"size":0}'))
    done = cosession("audit", "verify", "--data-dir", str(tmp_path))
    assert done.returncode == 1, done.stderr
    assert done.stdout.startswith("audit log broken at row 3: row 3 was altered")


def test_missing_database_is_an_error(tmp_path):
    done = cosession("audit", "verify", "--data-dir", str(tmp_path / "empty"))
    assert done.returncode == 2
    assert "no audit database at" in done.stderr and done.stdout == ""
    assert not (tmp_path / "empty").exists()


def test_database_url_and_anchor(tmp_path, start_store):  # noqa: F811
    url = make_log(tmp_path / "elsewhere", start_store)
    done = cosession("audit", "verify", "--database-url", url)
    assert done.returncode == 0, done.stderr
    anchor = done.stdout.split("--anchor ")[1].split(")")[0]
    assert cosession("audit", "verify", "--database-url", url, "--anchor", anchor).returncode == 0
    row_id, digest = anchor.split(":")
    forged = f"{row_id}:{'0' * 64}"
    done = cosession("audit", "verify", "--database-url", url, "--anchor", forged)
    assert done.returncode == 1 and done.stdout.startswith(f"audit log broken at row {row_id}:")
    done = cosession("audit", "verify", "--database-url", url, "--anchor", "ten:abc")
    assert done.returncode == 2 and "ROW_ID:SHA256_HEX" in done.stderr


def test_config_file_after_the_command(tmp_path, start_store):  # noqa: F811
    make_log(tmp_path / "d", start_store, n=4)
    config = tmp_path / "c.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path / "d"}"\n')
    done = cosession("audit", "verify", "--config", str(config))
    assert (done.returncode, done.stdout.splitlines()[0]) == (0, "audit log intact: 4 event rows")
    config.write_text("[server]\nnope = 1\n")
    done = cosession("audit", "verify", "--config", str(config))
    assert done.returncode == 2 and "unknown setting server.nope" in done.stderr


def test_a_directory_without_an_audit_log(tmp_path):
    path = tmp_path / "cosession.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    engine.dispose()
    done = cosession("audit", "verify", "--data-dir", str(tmp_path))
    assert done.returncode == 2 and "holds no audit log" in done.stderr
