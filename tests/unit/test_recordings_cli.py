"""`cosession recordings list|export|verify` and `cosession audit verify` over real recordings,
run as separate processes the way an operator runs them: a byte changed in a closed recording,
a recording removed, a file put there by hand are each named; retention's deletions are not."""

from __future__ import annotations

import io
import json
import os
import tarfile

import pytest

from config.settings import load
from engine.clock import ManualClock
from engine.db import event_hash
from engine.recordings import read_cast
from tests.actors.conftest import ADMIN, ALICE, SSH, make_engine, wait_until
from tests.unit.test_audit_cli import cosession
from protocols.synthetic import SyntheticConnection


def record_sessions(data_dir, count=2, **recordings):
    """`count` recorded sessions on a synthetic endpoint, ended; the engine stopped."""
    clock = ManualClock()
    settings = load(env={}, server={"data_dir": str(data_dir)}, recordings=recordings)
    engine = make_engine(settings, clock, data_dir)
    engine._database_url = settings.database_url
    engine.start()
    ids = []
    try:
        for n in range(count):
            connection = SyntheticConnection(clock)
            controller = engine.open_session(SSH, ALICE, connection=connection, record=True)
            assert controller.sink.wait_for(lambda s: any(getattr(e, "state", None) == "active" for e in s.events))
            connection.emit(b"session %d says hello\r\n" % n)
            assert controller.wait_for_output(b"hello")
            clock.advance(1)
            engine.terminate(controller.session_id, ADMIN)
            ids.append(controller.session_id)
        assert wait_until(lambda: engine.recordings.open_count() == 0)
    finally:
        engine.stop()
    return ids, settings


def test_list_export_and_verify_intact_recordings(tmp_path):
    ids, settings = record_sessions(tmp_path)
    listed = cosession("recordings", "list", "--data-dir", str(tmp_path), "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert sorted(r["session_id"] for r in rows) == sorted(ids)
    assert {r["state"] for r in rows} == {"closed"} and all(len(r["sha256"]) == 64 for r in rows)

    done = cosession("recordings", "verify", "--data-dir", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "recordings intact: 2 closed recordings match the audit log"
    assert cosession("audit", "verify", "--data-dir", str(tmp_path)).returncode == 0

    out = tmp_path / "export.cast"
    exported = cosession("recordings", "export", ids[0], "--data-dir", str(tmp_path), "-o", str(out))
    assert exported.returncode == 0, exported.stderr
    cast = read_cast(out.read_bytes())
    assert "session 0 says hello" in "".join(e[2] for e in cast.events if e[1] == "o")

    archive = tmp_path / "export.tar.gz"
    assert cosession("recordings", "export", ids[1], "--archive", "--data-dir", str(tmp_path),
                     "-o", str(archive)).returncode == 0
    with tarfile.open(archive) as tar:
        names = sorted(m.name for m in tar.getmembers())
        assert names == sorted(f"{ids[1]}/{n}" for n in (f"{ids[1]}.cast", "audit.jsonl", "manifest.json"))
        audit = [json.loads(line) for line in tar.extractfile(f"{ids[1]}/audit.jsonl").read().splitlines()]
        recording = tar.extractfile(f"{ids[1]}/{ids[1]}.cast").read()
    # the rows carry their hashes, recomputable from the archive alone
    for row in audit:
        assert event_hash(row["prev_hash"], row["at"], row["session_id"], row["kind"], row["actor_id"],
                          row["actor_name"], row["detail"]) == row["hash"]
    closed = [json.loads(r["detail"]) for r in audit if r["kind"] == "recording_closed"][0]
    import hashlib
    assert closed["sha256"] == hashlib.sha256(recording).hexdigest()


def test_one_byte_changed_is_named_by_both_verifies(tmp_path):
    ids, settings = record_sessions(tmp_path)
    path = settings.recordings_path / f"{ids[1]}.cast"
    os.chmod(path, 0o640)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    done = cosession("recordings", "verify", "--data-dir", str(tmp_path))
    assert done.returncode == 1
    assert done.stdout.startswith(f"recording of session {ids[1]}: its file {ids[1]}.cast was altered: its SHA-256")
    audit = cosession("audit", "verify", "--data-dir", str(tmp_path))
    assert audit.returncode == 1
    assert f"recording of session {ids[1]}: its file {ids[1]}.cast was altered" in audit.stdout
    refused = cosession("recordings", "export", ids[1], "--data-dir", str(tmp_path), "-o", str(tmp_path / "x"))
    assert refused.returncode == 1 and "was altered" in refused.stderr and not (tmp_path / "x").exists()


@pytest.mark.parametrize("change", ["removed", "truncated", "added"])
def test_a_removed_truncated_or_added_recording_is_named(tmp_path, change):
    ids, settings = record_sessions(tmp_path, count=1)
    path = settings.recordings_path / f"{ids[0]}.cast"
    if change == "removed":
        path.unlink()
        expected = f"its file {path.name} was removed"
    elif change == "truncated":
        os.chmod(path, 0o640)
        os.truncate(path, path.stat().st_size - 10)
        expected = "was altered: it is"
    else:
        (settings.recordings_path / "0123abcd.cast").write_bytes(path.read_bytes())
        expected = "the file 0123abcd.cast is not in the audit log"
    for command in (("recordings", "verify"), ("audit", "verify")):
        done = cosession(*command, "--data-dir", str(tmp_path))
        assert done.returncode == 1 and expected in done.stdout, done.stdout + done.stderr


def test_export_of_an_unknown_session_is_a_clear_error(tmp_path):
    record_sessions(tmp_path, count=1)
    done = cosession("recordings", "export", "nope", "--data-dir", str(tmp_path))
    assert done.returncode == 2 and "session nope has no recording" in done.stderr
    done = cosession("recordings", "export", "../etc", "--data-dir", str(tmp_path))
    assert done.returncode == 2 and "not a session id" in done.stderr
    assert cosession("recordings", "list", "--data-dir", str(tmp_path / "none")).returncode == 2
