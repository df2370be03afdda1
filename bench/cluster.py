"""The websocket load test against one cosession node and against two (docs/cluster.md).

    .venv/bin/python bench/cluster.py [--runs 3] [--sessions 50] [--viewers 10] [--rate 5]
                                      [--duration 20] [--in-step] [--json FILE | --from-json FILE]

Needs root (a throwaway PostgreSQL cluster made with Debian's ``initdb``/``pg_ctl``, as
tests/fixtures/postgres.py does) and ``nats-server``. Everything runs on 127.0.0.1 and stops by
itself. Each run of each layout starts from a fresh database and fresh nodes:

- **1 node**: every session and every viewer on node A;
- **2 nodes, viewers local**: sessions spread over A and B (session *n* on node *n* mod 2), its
  viewers on its controller's node: what a second process adds when nothing crosses nodes;
- **2 nodes, viewers across**: the same, each session's viewers on the *other* node, so that
  every frame reaches its viewers through the bus (``cosession serve --bus``): the cost of a
  cross-node viewer against a local one. Without a bus the nodes refuse such joins
  (``unknown_session``) and the row says so.

The load is `cosession loadtest --via websocket --url A[,B] [--viewers-on next] --json`
(synthetic endpoints, one stamped frame per `1/--rate` s per session, each stream at its own
phase unless `--in-step`, latency measured at the websocket clients) in a child process; its
clients share the machine's cores with the nodes. CPU is each node's process time (utime +
stime from ``/proc``) over the whole load test, set-up included. Medians over `--runs` with the
spread (min–max).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.dashboard.test_serve import Served  # noqa: E402  (a `cosession serve` child, its URL parsed)
from tests.fixtures.nats import NatsServer  # noqa: E402
from tests.fixtures.postgres import PostgresServer  # noqa: E402

LAYOUTS = [  # name, nodes, viewers on
    ("1 node", 1, "same"),
    ("2 nodes, viewers local", 2, "same"),
    ("2 nodes, viewers across", 2, "next"),
]
LOADER, LOADER_PASSWORD = "loader", "loader-" + secrets.token_hex(8)


def _serve_has_bus() -> bool:
    help_text = subprocess.run([sys.executable, "-m", "cosession.cli", "serve", "--help"], cwd=ROOT,
                               capture_output=True, text=True, timeout=60).stdout
    return "--bus" in help_text


def _config(path: Path, node_id: str, keys: str) -> Path:
    # Every participant is a websocket from 127.0.0.1: the per-address edge limits are for the
    # Internet, not for a load test's one client machine.
    path.write_text(f'[engine]\nnode_id = "{node_id}"\n[security]\n{keys}'
                    '[edge]\nmax_connections_per_client = 100000\nmax_anonymous_connections = 100000\n'
                    'max_anonymous_connections_per_client = 100000\n')
    return path


def _prepare(database_url: str, keys_file: Path) -> str:
    """The load test's account and synthetic endpoint, written to the shared database the way
    the nodes' repositories write them; the endpoint's id."""
    from config.settings import load
    from dashboard.repositories import Repositories
    from dashboard.security.secrets import Secrets
    from engine.messages import EndpointProtocol

    settings = load(str(keys_file), engine={"database_url": database_url})
    repos = Repositories.open(settings.database_url, Secrets.from_settings(settings))
    try:
        user = repos.users.create(LOADER, LOADER_PASSWORD)
        endpoint = repos.endpoints.create("load", EndpointProtocol.SYNTHETIC, host="")
        repos.grants.grant(endpoint.id, user.id)
        return endpoint.id
    finally:
        repos.close()


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def one_run(postgres: PostgresServer, nats: NatsServer | None, layout: tuple[str, int, str],
            args: argparse.Namespace) -> dict[str, Any]:
    name, node_count, viewers_on = layout
    database = postgres.create_database()
    url = postgres.url_of(database).replace("postgresql+psycopg://", "postgresql://")
    nodes: list[Served] = []
    with tempfile.TemporaryDirectory(prefix="cosession-bench-cluster-") as tmp:
        tmp_path = Path(tmp)
        keys = (f'secret_key = "{secrets.token_urlsafe(32)}"\n'
                f'credential_key = "{base64.b64encode(os.urandom(32)).decode()}"\n')
        try:
            for index in range(node_count):
                node_id = "ab"[index]
                config = _config(tmp_path / f"{node_id}.toml", node_id, keys)
                extra = ["--bus", nats.url] if nats is not None else []
                nodes.append(Served(tmp_path / node_id, "--no-demo", "--config", str(config), "--database", url,
                                    *extra))
                nodes[-1].passwords()  # started: the first one migrated the database
            endpoint_id = _prepare(url, tmp_path / "a.toml")
            env = {**{k: v for k, v in os.environ.items() if not k.startswith("COSESSION_")},
                   "COSESSION_LOADTEST_USER": LOADER, "COSESSION_LOADTEST_PASSWORD": LOADER_PASSWORD,
                   "COSESSION_LOADTEST_ENDPOINT": endpoint_id}
            ticks_before = [_cpu_ticks(node.proc.pid) for node in nodes]
            began = time.monotonic()
            load = subprocess.run(
                [sys.executable, "-m", "cosession.cli", "loadtest", "--via", "websocket",
                 "--url", ",".join(node.url for node in nodes), "--viewers-on", viewers_on,
                 "--sessions", str(args.sessions), "--viewers", str(args.viewers), "--rate", str(args.rate),
                 "--duration", str(args.duration), "--json", *(["--in-step"] if args.in_step else [])],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.duration + 600)
            wall = time.monotonic() - began
            tick = os.sysconf("SC_CLK_TCK")
            cpu = [(_cpu_ticks(node.proc.pid) - before) / tick for node, before in zip(nodes, ticks_before)]
            report = json.loads(load.stdout.strip().splitlines()[-1]) if load.stdout.strip() else \
                {"errors": [load.stderr.strip()[-2000:]]}
        finally:
            for node in nodes:
                node.stop(signal.SIGTERM)
            postgres.drop_database(database)
    return {"layout": name, "load_at_start": os.getloadavg()[0], "wall_seconds": round(wall, 1),
            "node_cpu_seconds": [round(c, 2) for c in cpu], "report": report}


def _median(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    return f"{statistics.median(values):g} ({min(values):g}–{max(values):g})"


def table(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    rows = [
        ("p50 latency, ms", lambda r: r["report"].get("fanout_latency_ms", {}).get("p50")),
        ("p99 latency, ms", lambda r: r["report"].get("fanout_latency_ms", {}).get("p99")),
        ("max latency, ms", lambda r: r["report"].get("fanout_latency_ms", {}).get("max")),
        ("sessions started", lambda r: r["report"].get("sessions_started")),
        ("viewers joined", lambda r: r["report"].get("viewers_joined")),
        ("frames dropped", lambda r: r["report"].get("frames_dropped")),
        ("CPU of all nodes, s", lambda r: sum(r["node_cpu_seconds"])),
        ("errors", lambda r: len(r["report"].get("errors", []))),
        ("load average at the run's start", lambda r: round(r["load_at_start"], 2)),
    ]
    layouts = [name for name, _, _ in LAYOUTS if any(r["layout"] == name for r in results)]
    head = f"| figure | {' | '.join(layouts)} |\n| --- |{' --- |' * len(layouts)}\n"
    body = ""
    for label, get in rows:
        cells = [_median([get(r) for r in results if r["layout"] == name]) for name in layouts]
        body += f"| {label} | {' | '.join(cells)} |\n"
    refusals = {r["layout"]: r["report"].get("joins_refused") for r in results if r["report"].get("joins_refused")}
    note = f"\nRefused joins: {json.dumps(refusals)}\n" if refusals else ""
    return (f"`bench/cluster.py --runs {args.runs} --sessions {args.sessions} --viewers {args.viewers} "
            f"--rate {args.rate:g} --duration {args.duration:g}`, median (min–max):\n\n{head}{body}{note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--viewers", type=int, default=10)
    parser.add_argument("--rate", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--in-step", action="store_true",
                        help="every session's stream at once, as before 2026-12-02 (default: each at its own phase)")
    parser.add_argument("--layouts", default="all", help="comma-separated indexes into the layouts (0,1,2) or all")
    parser.add_argument("--json", help="also write every run's figures to this file")
    parser.add_argument("--from-json", help="print the table of an earlier --json file, run nothing")
    args = parser.parse_args()
    if args.from_json:
        print(table(json.loads(Path(args.from_json).read_text()), args))
        return 0
    layouts = LAYOUTS if args.layouts == "all" else [LAYOUTS[int(i)] for i in args.layouts.split(",")]
    results: list[dict[str, Any]] = []
    nats = NatsServer("nats-server") if _serve_has_bus() else None
    with PostgresServer() as postgres:
        if nats is not None:
            nats.start()
        try:
            for run in range(args.runs):
                for layout in layouts:  # interleaved: the machine's load drifts alike for each
                    result = one_run(postgres, nats, layout, args)
                    report = result["report"]
                    print(f"{layout[0]} run {run + 1}/{args.runs}: p99 "
                          f"{report.get('fanout_latency_ms', {}).get('p99')} ms, node CPU {result['node_cpu_seconds']} s, "
                          f"load {result['load_at_start']:.2f}, errors {report.get('errors', [])[:3]}", file=sys.stderr)
                    results.append(result)
        finally:
            if nats is not None:
                nats.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(table(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
