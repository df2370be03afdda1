"""bench/ssh_websocket.py at a tiny size (1 run, 2 viewers, 1 MB): every figure of the report
comes out, for cosession and for tmux, and the docs section is written in place. It keeps the
benchmark from rotting; it measures nothing."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.openssh import _skip_reason

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "ssh_websocket.py"

pytestmark = pytest.mark.openssh


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_ssh_websocket", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[spec.name]
        raise
    return module


def _skip_unless_runnable() -> None:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    for tool in ("tmux", "ssh"):
        if shutil.which(tool) is None:
            pytest.skip(f"the benchmark needs {tool}")


DOC = """# Benchmarks

## The engine (actors only, no network)

(measurements follow)

## Joint SSH sessions through real websockets

Written by hand, kept.

(measurements follow)

## A later section

kept too
"""


def _run(command: list[str]) -> str:
    """Run a benchmark from the repository's root; its standard output, once it succeeded
    within 120 s (SIGTERM past that: a benchmark stops its servers and clients first)."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.terminate()
        stdout, stderr = process.communicate(timeout=60)
        pytest.fail(f"the benchmark did not finish within 120 s: {stderr[-3000:]}")
    assert process.returncode == 0, stderr[-3000:]
    return stdout


def test_the_benchmark_produces_every_figure(tmp_path):
    _skip_unless_runnable()
    bench = _bench_module()
    docs = tmp_path / "benchmarks.md"
    docs.write_text(DOC)
    stdout = _run([sys.executable, str(SCRIPT), "--runs", "1", "--viewers", "2", "--cat-mb", "1", "--lines", "10",
                   "--late", "1", "--idle", "0.2", "--parallel", "2", "--flood-mb", "0.3", "--json", "--quiet",
                   "--write-docs", str(docs)])
    report = json.loads(stdout)

    run = report["runs"][0]
    for kind in ("cosession", "tmux"):
        figures = run[kind]
        flags = {k: figures[k] for k in ("lines_complete", "par_lines_complete", "cat_complete",
                                         "interrupt_complete", "lines_lost", "late_samples_bad")}
        assert flags == {"lines_complete": True, "par_lines_complete": True, "cat_complete": True,
                         "interrupt_complete": True, "lines_lost": 0, "late_samples_bad": 0}, (kind, flags)
        assert figures["cat_received_mb"] > 0 and figures["cat_effective_mbps"] > 0
    only = {"cosession": {"gateway_p50_ms", "gateway_p99_ms", "gateway_rtt_p50_ms", "late_join_ms",
                          "gateway_peak_rss_mb", "cpu_cat_screen_s", "line_messages_per_line"},
            "tmux": {"late_fresh_ssh_ms"}}
    for key, _, _ in bench.FIGURES:
        entry = report["summary"][key]
        for kind in ("cosession", "tmux"):
            if key in only["tmux" if kind == "cosession" else "cosession"]:
                assert kind not in entry, (key, kind)
            else:
                assert isinstance(entry[kind]["median"], (int, float)), (key, kind, entry)
        if key not in bench.NOT_COMPARED:
            assert "ratio" in entry or entry["tmux"]["median"] == 0, (key, entry)
    assert report["machine"]["nproc"] >= 1 and report["machine"]["python"]

    text = docs.read_text()
    assert text.count(bench.BEGIN) == 1 and text.count(bench.END) == 1
    section = text.split("## Joint SSH sessions through real websockets")[1].split("## A later section")[0]
    assert "Written by hand, kept." in section and "| Line latency, input → each viewer, p50, ms |" in section
    assert "(measurements follow)" not in section
    assert text.split("## Joint SSH")[0] == DOC.split("## Joint SSH")[0]  # the other section untouched
    assert text.endswith("## A later section\n\nkept too\n")

    # a second write replaces the block, nothing else
    bench.write_docs(docs, f"{bench.BEGIN}\nnew table\n{bench.END}")
    again = docs.read_text()
    assert "new table" in again and "| Line latency" not in again and "Written by hand, kept." in again


STALLED = ROOT / "bench" / "stalled_viewer.py"


def test_the_stalled_viewer_benchmark_produces_every_figure(tmp_path):
    _skip_unless_runnable()
    docs = tmp_path / "benchmarks.md"
    docs.write_text(DOC)
    stdout = _run([sys.executable, str(STALLED), "--runs", "1", "--stalled", "0,1", "--cat-mb", "1", "--lines", "5",
                   "--steady-kb", "5", "--close-wait", "1", "--json", "--quiet", "--write-docs", str(docs)])
    report = json.loads(stdout)
    for case in ("0", "1"):
        figures = report["runs"][0][case]
        assert figures["cat_complete"] is True and figures["lines_lost"] == 0 and figures["steady_lost"] == 0, figures
        for key in ("cat_controller_s", "cat_controller_mbps", "steady_p95_ms", "line_p95_ms", "end_ms"):
            assert isinstance(figures[key], (int, float)), (case, key, figures)
    text = docs.read_text()
    section = text.split("## Stalled viewers and the controller")[1]
    assert "| cat: throughput to the controller (file size / that time), MB/s |" in section
    assert text.startswith(DOC.rstrip("\n"))  # the other sections untouched


def test_the_paired_benchmark_gives_each_checkout_every_figure(tmp_path):
    _skip_unless_runnable()
    # this checkout twice: two gateways from the same code, each its own figures and ratio
    report_path = tmp_path / "paired.json"
    stdout = _run([sys.executable, str(ROOT / "bench" / "ssh_paired.py"), f"{ROOT},{ROOT}", "--rounds", "2", "--cat-mb", "1",
                   "--lines", "3", "--json", str(report_path)])
    report = json.loads(report_path.read_text())
    assert report["rounds"] == 2
    for figures in report["raw"].values():
        assert set(figures) == {"cat_s", "cat_cpu_s", "line_p50_ms", "line_p95_ms", "load1"}
        assert all(len(values) == 2 and all(v >= 0 for v in values) for values in figures.values()), figures
    assert stdout.count("| ") >= 3 and ", ×" in stdout  # the table: a row per checkout, the second with ratios
