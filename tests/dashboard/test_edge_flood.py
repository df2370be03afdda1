"""An anonymous flood against `cosession serve` in its own process (bench/edge_flood.py at a small
size): the gateway's memory must not grow by more than 50 MiB at the flood's peak, and the
controller's session must still work afterwards. The controller's latency during the flood is
measured by the benchmark (docs/benchmarks.md), not asserted here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "edge_flood.py"
MAX_INCREASE_MIB = 50


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_edge_flood", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[spec.name]
        raise
    return module


def test_an_anonymous_flood_neither_bloats_the_gateway_nor_ends_a_session():
    result = _bench_module().run_once(seconds=3.0, clients=6)
    assert result["gateway_alive"], result
    assert result["attacks"] > 100, result  # the flood did happen
    assert result["peak_increase_mib"] <= MAX_INCREASE_MIB, result
    assert result["after_increase_mib"] <= MAX_INCREASE_MIB, result
