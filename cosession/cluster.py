"""Show the nodes that share this database and the sessions each runs.

    cosession cluster status [--data-dir D] [--database URL] [--json]

Reads the ``nodes`` table and the live sessions (docs/cluster.md, docs/engine.md Nodes): a node
is *running* while it has not stopped and its heartbeat is fresh, *stopped* after a clean stop,
and *not seen* when its heartbeat is older than three beats (killed, or cut off from the
database). Exit status: 0, or 2 when the database cannot be read or the settings are wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

_EXIT_OK, _EXIT_ERROR = 0, 2
SESSIONS_SHOWN = 1000  # per node; more are counted, not listed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")
    status = sub.add_parser("status", help="the nodes on this database and their live sessions",
                            description="List the nodes that share this database, whether each is running, "
                                        "and the live sessions each runs.")
    status.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="a TOML file overriding config/default.toml")
    status.add_argument("--data-dir", metavar="D", help="the data directory (server.data_dir)")
    status.add_argument("--database", metavar="URL", help="the database (engine.database_url)")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=run)


def run(args: Any) -> int:
    if args.cluster_command == "status":
        return _status(args)
    raise AssertionError(args.cluster_command)  # argparse allows only the actions above


def _state(node: dict[str, Any]) -> str:
    if node["running"]:
        return "running"
    return "stopped" if node["stopped_at"] is not None else "not seen"


def _status(args: Any) -> int:
    from config.settings import SettingsError
    from cosession.command_settings import settings_for
    from engine.audit import AuditReader

    try:
        settings = settings_for(args, args.database)
    except SettingsError as exc:
        print(f"cosession cluster status: {exc}", file=sys.stderr)
        return _EXIT_ERROR
    if not settings.engine.database_url and not (settings.data_path / "cosession.db").is_file():
        print(f"cosession cluster status: no database in {settings.data_path}", file=sys.stderr)
        return _EXIT_ERROR
    try:
        reader = AuditReader(settings.database_url)
    except Exception as exc:  # unreachable, refused: not a status
        cause = getattr(exc, "orig", None) or exc
        print(f"cosession cluster status: cannot read the database: {str(cause).strip().splitlines()[0]}",
              file=sys.stderr)
        return _EXIT_ERROR
    try:
        nodes = reader.nodes()
        for node in nodes:
            node["state"] = _state(node)
            node["sessions"] = []
        by_name = {node["node_id"]: node for node in nodes}
        sessions, _ = reader.sessions(live=True, limit=SESSIONS_SHOWN * max(1, len(nodes)))
        for session in sessions:
            owner = by_name.get(session["node_id"])
            if owner is not None and len(owner["sessions"]) < SESSIONS_SHOWN:
                owner["sessions"].append(session)
    finally:
        reader.close()
    if args.json:
        print(json.dumps({"nodes": nodes}, indent=2, sort_keys=True))
    else:
        _print_table(nodes, time.time())
    return _EXIT_OK


def _ago(now: float, then: float) -> str:
    seconds = max(0.0, now - then)
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def _print_table(nodes: list[dict[str, Any]], now: float) -> None:
    if not nodes:
        print("no node has written to this database yet")
        return
    print(f"{'NODE':<20} {'STATE':<9} {'HOST':<20} {'PID':>7}  {'LAST SEEN':<12} SESSIONS")
    for node in nodes:
        print(f"{node['node_id']:<20} {node['state']:<9} {node['host']:<20} {node['pid']:>7}  "
              f"{_ago(now, node['last_seen_at']):<12} {node['live_sessions']}")
        for session in node["sessions"]:
            print(f"    {session['id']}  {session['protocol']:<5} {session['endpoint_name']}  "
                  f"controller {session['controller_name']}, started {_ago(now, session['started_at'])}")
        hidden = node["live_sessions"] - len(node["sessions"])
        if hidden > 0:
            print(f"    ... and {hidden} more")
