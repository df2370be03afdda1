"""`cosession loadtest`, as issue 3 checks it, scaled down."""

import json
import subprocess
import sys

from cosession.loadtest import REPORT_KEYS


def cosession(*args):
    return subprocess.run([sys.executable, "-m", "cosession.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_the_rules_hold_under_load_and_the_audit_log_verifies(tmp_path):
    run = cosession("loadtest", "--sessions", "3", "--viewers", "11", "--rate", "5", "--input-rate", "2",
                    "--duration", "1", "--json", "--data-dir", str(tmp_path))
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert tuple(report) == REPORT_KEYS
    assert report["sessions_started"] == 3
    assert report["viewers_joined"] == 30
    assert report["joins_refused"] == {"viewer_cap": 3}
    assert report["inputs_refused"] > 0 and report["inputs_forwarded"] > 0
    assert report["frames_delivered"] == report["frames_generated"] * 11
    assert report["frames_dropped"] == 0
    assert set(report["fanout_latency_ms"]) == {"p50", "p95", "p99", "max"}
    assert report["threads_after_stop"] == 1
    assert report["errors"] == []
    verify = cosession("audit", "verify", "--data-dir", str(tmp_path))
    assert verify.returncode == 0 and "intact" in verify.stdout


def test_the_table_shows_progress_and_results():
    run = cosession("loadtest", "--sessions", "1", "--viewers", "2", "--duration", "0.2")
    assert run.returncode == 0, run.stderr
    assert "viewers joined" in run.stdout and "fanout latency ms" in run.stdout


def test_bad_flags_are_refused_clearly():
    run = cosession("loadtest", "--sessions", "-1", "--json")
    assert run.returncode == 2 and "--sessions must not be negative" in run.stderr
    run = cosession("loadtest", "--frame-bytes", "0")
    assert run.returncode == 2 and "--frame-bytes must be at least 1" in run.stderr


def test_streams_in_step_or_spread_deliver_every_frame():
    for flags in ([], ["--in-step"]):
        run = cosession("loadtest", "--sessions", "4", "--viewers", "2", "--rate", "20", "--duration", "0.5",
                        "--json", *flags)
        assert run.returncode == 0, run.stderr
        report = json.loads(run.stdout)
        assert report["frames_generated"] >= 4 and report["frames_delivered"] == report["frames_generated"] * 3


def test_recorded_load_writes_every_sessions_recording_and_they_verify(tmp_path):
    run = cosession("loadtest", "--sessions", "3", "--viewers", "2", "--rate", "5", "--duration", "1", "--json",
                    "--record", "--data-dir", str(tmp_path))
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["errors"] == [] and report["threads_after_stop"] == 1  # the writer threads stopped too
    assert len(list((tmp_path / "recordings").glob("*.cast"))) == 3
    listed = cosession("recordings", "list", "--json", "--data-dir", str(tmp_path))
    assert [json.loads(line)["state"] for line in listed.stdout.splitlines()] == ["closed"] * 3
    for command in (("recordings", "verify"), ("audit", "verify")):
        done = cosession(*command, "--data-dir", str(tmp_path))
        assert done.returncode == 0, done.stdout + done.stderr


def test_a_recorded_load_without_a_data_directory_leaves_nothing_behind(tmp_path):
    # its database is a temporary directory's: so are its recordings (not ./data/recordings,
    # where `audit verify` would find files its log does not name)
    run = subprocess.run([sys.executable, "-m", "cosession.cli", "loadtest", "--sessions", "2", "--viewers", "1",
                          "--duration", "0.5", "--json", "--record"], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["errors"] == []
    assert list(tmp_path.iterdir()) == []
