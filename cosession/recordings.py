"""List, export and verify session recordings (docs/recordings.md).

    cosession recordings list [--endpoint ID] [--limit N] [--json]
    cosession recordings export SESSION [-o FILE] [--archive]
    cosession recordings verify [SESSION ...]

Works on the data directory and the database directly (the server may be running or not).
`export` writes the recording as it is (a terminal's is an asciicast v2 ``.cast`` file, which
asciinema plays); with `--archive`, a ``.tar.gz`` of the recording, the session's audit rows
(``audit.jsonl``, with their hashes) and a manifest. A closed recording is exported only if it
is what the audit log says it is. `verify` checks every closed recording's size and SHA-256
against its chained ``recording_closed`` row, and that no file in the directory is unknown to
the log. Exit status: 0 intact, 1 a problem (each is named), 2 no log or bad settings.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import sys
import tarfile
import time
from typing import Any

_EXIT_OK, _EXIT_PROBLEM, _EXIT_ERROR = 0, 1, 2


def _where(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options every action takes, after the action as after `cosession audit verify`."""
    parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="a TOML file overriding config/default.toml")
    parser.add_argument("--data-dir", metavar="DIR", help="the data directory (server.data_dir)")
    parser.add_argument("--database-url", metavar="URL", help="a SQLAlchemy URL (engine.database_url)")
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = _where(actions.add_parser("list", help="recorded sessions, newest first"))
    listing.add_argument("--endpoint", metavar="ID", help="only this endpoint's")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default: %(default)s)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(action_run=_list)

    export = _where(actions.add_parser("export", help="write a session's recording (or an archive with its audit rows)"))
    export.add_argument("session")
    export.add_argument("-o", "--output", metavar="FILE", help="where to write it (default: standard output)")
    export.add_argument("--archive", action="store_true",
                        help="a .tar.gz of the recording, the session's audit rows and a manifest")
    export.set_defaults(action_run=_export)

    check = _where(actions.add_parser("verify", help="check recordings against the audit log (size, SHA-256, presence)"))
    check.add_argument("sessions", nargs="*", metavar="SESSION", help="only these (default: every recording)")
    check.set_defaults(action_run=_verify)
    parser.set_defaults(run=run)


def run(args: Any) -> int:
    from config.settings import SettingsError
    from cosession.command_settings import settings_for

    try:
        settings = settings_for(args, args.database_url)
    except SettingsError as exc:
        return _error(str(exc))
    from engine.audit import AuditLogMissing

    try:
        return int(args.action_run(args, settings))
    except AuditLogMissing as exc:
        return _error(str(exc))


def _error(message: str) -> int:
    print(f"cosession recordings: {message}", file=sys.stderr)
    return _EXIT_ERROR


def _connect(settings: Any) -> Any:
    """A read-only look at the audit log (never creates it)."""
    from engine.audit import open_log

    return open_log(settings.database_url)


def _when(at: float | None) -> str:
    if at is None:
        return "-"
    return datetime.datetime.fromtimestamp(at, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _list(args: Any, settings: Any) -> int:
    from engine.recording_log import recordings

    with _connect(settings).connect() as conn:
        found = recordings(conn, endpoint_id=args.endpoint, limit=args.limit)
    if args.json:
        for info in found:
            print(json.dumps(info.as_json(), sort_keys=True))
        return _EXIT_OK
    if not found:
        print("no recorded sessions")
        return _EXIT_OK
    print(f"{'SESSION':<32}  {'ENDPOINT':<16} {'CONTROLLER':<12} {'STARTED (UTC)':<19}  {'STATE':<9} "
          f"{'BYTES':>10}  SHA-256")
    for info in found:
        size = "-" if info.bytes is None else str(info.bytes)
        print(f"{info.session_id:<32}  {info.endpoint_name[:16]:<16} {info.controller_name[:12]:<12} "
              f"{_when(info.started_at):<19}  {info.state:<9} {size:>10}  {(info.sha256 or '-')[:16]}")
    return _EXIT_OK


def _export(args: Any, settings: Any) -> int:
    from engine.recording_log import check_file, recording, session_rows
    from engine.recordings import valid_session_id

    if not valid_session_id(args.session):
        return _error(f"not a session id: {args.session!r}")
    directory = settings.recordings_path
    db = _connect(settings)
    with db.connect() as conn:
        info = recording(conn, args.session)
        if info is None or info.state in ("none",) or not info.file:
            return _error(f"session {args.session} has no recording")
        if info.state == "deleted":
            return _error(f"the recording of session {args.session} was deleted (retention)")
        problem = check_file(info, directory)
        if problem:
            print(f"recording of session {args.session}: {problem}", file=sys.stderr)
            return _EXIT_PROBLEM
        rows = session_rows(conn, args.session) if args.archive else []
    path = directory / info.file
    try:
        data = path.read_bytes()
    except OSError as exc:
        return _error(f"cannot read {path.name}: {exc.strerror or exc}")
    if args.archive:
        data = _archive(info, path.name, data, rows)
    if args.output:
        with open(args.output, "wb") as f:
            f.write(data)
        if info.state != "closed":
            print(f"note: session {args.session} is still being recorded: this is what is written so far",
                  file=sys.stderr)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    return _EXIT_OK


def _archive(info: Any, name: str, data: bytes, rows: list[dict[str, Any]]) -> bytes:
    """The recording, its session's audit rows as stored (detail as its canonical JSON text, so
    each row's hash can be recomputed: docs/audit.md) and a manifest, as one .tar.gz."""
    manifest = {"session": info.as_json(), "recording": name,
                "exported_at": time.time(), "audit_rows": "audit.jsonl",
                "hash": "sha256_hex(prev_hash + canonical_json([at, session_id, kind, actor_id, actor_name, detail]))"}
    members = [(name, data), ("audit.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()),
               ("manifest.json", json.dumps(manifest, indent=2, sort_keys=True).encode())]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for member, content in members:
            entry = tarfile.TarInfo(f"{info.session_id}/{member}")
            entry.size, entry.mtime, entry.mode = len(content), int(time.time()), 0o444
            tar.addfile(entry, io.BytesIO(content))
    return out.getvalue()


def _verify(args: Any, settings: Any) -> int:
    from engine.recording_log import check_file, recording, recordings, verify_recordings

    directory = settings.recordings_path
    problems: list[tuple[str, str]] = []
    with _connect(settings).connect() as conn:
        if args.sessions:
            checked = 0
            for session_id in args.sessions:
                info = recording(conn, session_id)
                if info is None:
                    problems.append((session_id, "no recorded session has this id"))
                    continue
                checked += 1
                problem = check_file(info, directory)
                if problem:
                    problems.append((session_id, problem))
        else:
            problems = [(p.session_id, p.problem) for p in verify_recordings(conn, directory)]
            checked = sum(1 for info in recordings(conn) if info.state == "closed")
    for session_id, problem in problems:
        print(f"recording of session {session_id}: {problem}")
    if problems:
        return _EXIT_PROBLEM
    print(f"recordings intact: {checked} closed recordings match the audit log")
    return _EXIT_OK
