"""bench/vnc_websocket.py at a tiny size (1 run, 2 viewers, a few keys): every figure comes out
for cosession and for the direct path, nothing is missed, and the docs section is written in
place. It keeps the benchmark from rotting; it measures nothing."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.xvnc import skip_reason

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "vnc_websocket.py"

pytestmark = pytest.mark.xvnc


def test_the_vnc_benchmark_produces_every_figure(tmp_path):
    if skip_reason():
        pytest.skip(skip_reason())
    if importlib.util.find_spec("websockify") is None or importlib.util.find_spec("tkinter") is None:
        pytest.skip("the VNC benchmark needs websockify and tkinter")
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## Joint VNC sessions through real websockets\n\nBy hand, kept.\n\n"
                    "## After\n\nkept too\n")
    process = subprocess.run(
        [sys.executable, str(SCRIPT), "--runs", "1", "--viewers", "2", "--marks", "3", "--full", "1", "--width", "800",
         "--height", "600",
         "--late", "1", "--seconds", "1", "--mark-interval", "0.1", "--json", "--write-docs", str(docs)],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert process.returncode == 0, process.stderr[-3000:]
    report = json.loads(process.stdout)
    run = report["runs"][0]
    for side in ("cosession", "direct"):
        assert run[side]["marks_missed"] == 0, run[side]
        for key in ("latency_p50_ms", "full_last_p50_ms", "cpu_all_pct", "cpu_per_viewer_pct",
                    "bytes_per_viewer_kbs", "late_p50_ms"):
            assert isinstance(run[side][key], (int, float)), (side, key, run[side])
    text = docs.read_text()
    assert "By hand, kept." in text and "kept too" in text
    assert text.count("<!-- bench:vnc_websocket:begin -->") == 1 and "| key → viewer, p50, ms |" in text
