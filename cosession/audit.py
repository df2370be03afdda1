"""Check the audit log's hash chain, the sessions table and the recordings against it.

    cosession audit verify [--data-dir D] [--database-url URL] [--anchor ID:HASH ...]

Exit status: 0 the log is intact, 1 it is broken (the first bad row is named), 2 there is no
log to check or the settings are wrong.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

_EXIT_INTACT, _EXIT_BROKEN, _EXIT_ERROR = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    check = sub.add_parser("verify", help="walk the hash chain and report the first altered or removed row",
                           description="Walk the audit log's hash chain. Exit 0 if it is intact, 1 if "
                                       "it is broken, 2 if there is no log to check.")
    check.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                       help="a TOML file overriding config/default.toml")
    check.add_argument("--data-dir", metavar="D", help="the data directory (server.data_dir)")
    check.add_argument("--database-url", "--database", metavar="URL",
                       help="the database, e.g. postgresql://USER@HOST:PORT/DB (engine.database_url)")
    check.add_argument("--anchor", metavar="ID:HASH", action="append", default=[], type=_anchor,
                       help="a row id and its hash recorded outside the database (printed by an "
                            "earlier verify); the row must still be there, unchanged. Repeatable.")
    parser.set_defaults(run=run)


def _anchor(text: str) -> tuple[int, str]:
    row_id, sep, digest = text.partition(":")
    digest = digest.strip().lower()
    if not sep or not row_id.strip().isdigit() or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise argparse.ArgumentTypeError(f"expected ROW_ID:SHA256_HEX, got {text!r}")
    return int(row_id), digest


def run(args: Any) -> int:
    if args.audit_command == "verify":
        return _verify(args)
    raise AssertionError(args.audit_command)  # argparse allows only the actions above


def _verify(args: Any) -> int:
    from config.settings import SettingsError
    from cosession.command_settings import settings_for
    from engine.audit import AuditLogMissing, verify

    try:
        settings = settings_for(args, args.database_url)
    except SettingsError as exc:
        print(f"cosession audit verify: {exc}", file=sys.stderr)
        return _EXIT_ERROR
    url = settings.database_url
    try:
        report = verify(url, anchors=dict(args.anchor), recordings=settings.recordings_path)
    except AuditLogMissing as exc:
        print(f"cosession audit verify: {exc}", file=sys.stderr)
        return _EXIT_ERROR
    except Exception as exc:  # cannot connect, cannot read: not a verdict on the chain
        print(f"cosession audit verify: cannot read the audit log: {type(exc).__name__}: {exc}", file=sys.stderr)
        return _EXIT_ERROR
    if report.ok:
        print(f"audit log intact: {report.rows} event rows")
        if report.head_id is not None:
            print(f"head: row {report.head_id} hash {report.head_hash} (anchor with --anchor "
                  f"{report.head_id}:{report.head_hash})")
        return _EXIT_INTACT
    where = f" at row {report.first_bad_id}" if report.first_bad_id is not None else ""
    print(f"audit log broken{where}: {report.problem}")
    return _EXIT_BROKEN
