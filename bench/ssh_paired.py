"""The plain SSH output path of several checkouts at once, interleaved: which one is faster.

    .venv/bin/python bench/ssh_paired.py CHECKOUT[,CHECKOUT...] [--rounds 10] [--cat-mb 20]
                                         [--lines 15] [--json FILE]

A regression of 10-20 % is smaller than what a shared machine's load does to one run of
bench/stalled_viewer.py (load 1 to 5 moves a 20 MB cat between 0.5 and 3 s), and runs of one
revision after the other measure the load as much as the revision. This starts one ``sshd`` and,
for every checkout (a worktree: ``git worktree add --detach DIR REV``), its own gateway child
(bench/ssh_websocket.py's, from that checkout's code, with this interpreter) with a controller
and one reading viewer; then, round after round, each gateway in turn (the order rotating)
runs the same work:

1. **cat**: the controller runs ``cat FILE; printf 'BM%dE\\n' ID`` on a text file of
   `--cat-mb` MB: the time from the command's send to the marker's receipt by the controller,
   and the gateway process's CPU seconds meanwhile (utime + stime, 10 ms ticks);
2. **quiet lines**: `--lines` marker lines 50 ms apart, from the send to the controller's
   receipt (p50 and p95 of the round).

Every gateway sees the same machine load within seconds of the others. Medians over the rounds
with the spread (min-max) and the ratio to the first checkout; the load average at each
round's start. Needs what bench/ssh_websocket.py needs (root, openssh-server).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))


def _load_ssh_websocket() -> Any:
    name = "bench_ssh_websocket"  # bench/ is not a package: its engine.py would shadow the engine
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / "ssh_websocket.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


sw = _load_ssh_websocket()
USERS = ["ctl-0", "view-0-0"]
FIGURES = ["cat_s", "cat_cpu_s", "line_p50_ms", "line_p95_ms", "load1"]


class CheckoutGateway(sw.GatewayProcess):
    """bench/ssh_websocket.py's gateway child, run from another checkout's code."""

    def __init__(self, checkout: Path, config: dict[str, Any], log_path: Path) -> None:
        super().__init__(config, log_path, script=checkout / "bench" / "ssh_websocket.py", cwd=checkout)


def labels(checkouts: list[Path]) -> list[str]:
    """One per checkout, distinct also when a checkout is given twice (an A/A run: the noise)."""
    return [f"{n + 1}. {c.name}" for n, c in enumerate(checkouts)]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / sw.CLK_TCK


async def _rounds(args: argparse.Namespace, gateways: list[Any], cat_path: Path) -> dict[str, dict[str, list[float]]]:
    import trio

    from cosession.join import login

    names = labels(args.checkouts)
    results: dict[str, dict[str, list[float]]] = {n: {f: [] for f in FIGURES} for n in names}
    marks = iter(range(5000, 10**9))
    async with trio.open_nursery() as nursery:
        sides = {}
        for name, gateway in zip(names, gateways):
            base, endpoint = gateway.info["base_url"], gateway.info["endpoints"][0]
            cookies = {u: await trio.to_thread.run_sync(login, base, u, sw.PASSWORD) for u in USERS}
            controller, viewer = sw.WsClient("ctl-0"), sw.WsClient("view-0-0")
            await controller.open(nursery, base, cookies["ctl-0"], f"/ws/endpoints/{endpoint}/start",
                                  {"type": "start", "cols": sw.COLS, "rows": sw.ROWS})
            if not await controller.receiver.wait_for(lambda c=controller: c.state == "active", 30):
                raise sw.BenchError(f"{name}: the session did not become active")
            await viewer.open(nursery, base, cookies["view-0-0"], f"/ws/sessions/{controller.session_id}",
                              {"type": "join"})
            await controller.send(b"PS1='$ '\r")
            mark = next(marks)
            await controller.send(sw.line_command(mark))
            if not await sw.wait_all([controller, viewer], lambda c, m=mark: m in c.receiver.marks, 30):
                raise sw.BenchError(f"{name}: the shell did not answer within 30 s")
            sides[name] = (gateway, controller, viewer)
        for round_ in range(args.rounds):
            for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                gateway, controller, viewer = sides[name]
                figures = results[name]
                figures["load1"].append(os.getloadavg()[0])
                mark = next(marks)
                cpu, sent = _cpu_seconds(gateway.pid), time.perf_counter_ns()
                await controller.send(f"cat {cat_path}; printf 'BM%dE\\n' {mark}\r".encode())
                if not await sw.wait_all([controller], lambda c, m=mark: m in c.receiver.marks, 60 + 10 * args.cat_mb):
                    raise sw.BenchError(f"{name}: the cat did not end")
                figures["cat_cpu_s"].append(_cpu_seconds(gateway.pid) - cpu)
                figures["cat_s"].append((controller.receiver.marks[mark] - sent) / 1e9)
                await sw.wait_all([viewer], lambda c, m=mark: m in c.receiver.marks, 60 + 10 * args.cat_mb)
                await trio.sleep(0.3)  # the cat's last batches out of the way
                latencies = []
                for _ in range(args.lines):
                    mark = next(marks)
                    sent = time.perf_counter_ns()
                    await controller.send(sw.line_command(mark))
                    await sw.wait_all([controller], lambda c, m=mark: m in c.receiver.marks, 30)
                    latencies.append((controller.receiver.marks[mark] - sent) / 1e6)
                    await trio.sleep(0.05)
                figures["line_p50_ms"].append(sw.pct(latencies, 50))
                figures["line_p95_ms"].append(sw.pct(latencies, 95))
                print(f"[paired] round {round_ + 1}: {name}: "
                      + ", ".join(f"{k}={v[-1]:.3g}" for k, v in figures.items()), file=sys.stderr, flush=True)
        for _, controller, viewer in sides.values():
            for client in (controller, viewer):
                with contextlib.suppress(Exception):
                    await client.aclose()
        nursery.cancel_scope.cancel()
    return results


def run(args: argparse.Namespace) -> dict[str, Any]:
    import trio

    from tests.fixtures.openssh import TEST_USER, OpenSshAccount, _ensure_user, _keygen, start_sshd

    work = Path(tempfile.mkdtemp(prefix="cosession-paired-"))
    server = None
    gateways: list[Any] = []
    try:
        password, home = _ensure_user()
        private, public = _keygen(work / "id_ed25519")
        server = start_sshd(OpenSshAccount(TEST_USER, password, home, private, public, "", "", "", public + "\n"))
        cat_path = server.directory / "cat.txt"
        sw.write_cat_file(cat_path, int(args.cat_mb * 1e6))
        for index, checkout in enumerate(args.checkouts):
            gateways.append(CheckoutGateway(checkout, {
                "host": server.host, "port": server.port, "username": server.username, "private_key": private,
                "host_key": server.host_key, "sessions": 1, "users": USERS, "settings": {}},
                work / f"gateway{index}.log"))
        results = trio.run(_rounds, args, gateways, cat_path)
    finally:
        for gateway in gateways:
            gateway.stop()
        if server is not None:
            server.stop()
            shutil.rmtree(server.directory, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    return {"command": sw.command_line(), "checkouts": [str(c) for c in args.checkouts], "rounds": args.rounds,
            "cat_mb": args.cat_mb, "raw": results}


def table(report: dict[str, Any]) -> str:
    raw = report["raw"]
    first = next(iter(raw))
    lines = ["| checkout | " + " | ".join(FIGURES) + " |", "| --- |" + " --- |" * len(FIGURES)]
    for name, figures in raw.items():
        cells = []
        for figure in FIGURES:
            values = figures[figure]
            cell = f"{statistics.median(values):.3g} ({min(values):.3g}–{max(values):.3g})"
            if name != first and figure != "load1":
                cell += f", ×{statistics.median(values) / statistics.median(raw[first][figure]):.2f}"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", type=lambda s: [Path(p).resolve() for p in s.split(",")])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--cat-mb", type=float, default=20.0)
    parser.add_argument("--lines", type=int, default=15)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    report = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
