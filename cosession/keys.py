"""Rotate the gateway's keys: the credential key (stored secrets re-encrypted) or the secret key.

    cosession keys rotate credential [--new-key-stdin]
    cosession keys rotate secret

`rotate credential` makes a new credential key and re-encrypts every stored secret with it
(endpoint credentials, authenticator secrets) in one transaction; afterwards the old key
decrypts nothing. Stop the gateway first: it refuses while a gateway runs on the database (a
running gateway would go on encrypting with the old key). With the key in a key file (the
default) the command replaces the file; a rotation interrupted between the database and the
file is finished by running it again. With the key in the settings (security.credential_key or
COSESSION_SECURITY_CREDENTIAL_KEY) give the new one, 32 random bytes in base64 (for example
`openssl rand -base64 32`), on standard input with --new-key-stdin, then put it in the settings
before the next start.

`rotate secret` makes a new secret key (in its key file): at the next start every session cookie
and share link signed with the old one stops working, so everyone signs in again.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", metavar="DIR", help="the data directory (default: server.data_dir)")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    rotate = actions.add_parser("rotate", help="replace a key: credential (stored secrets re-encrypted) or secret")
    rotate.add_argument("key", choices=["credential", "secret"])
    rotate.add_argument("--data-dir", metavar="DIR", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    rotate.add_argument("--new-key-stdin", action="store_true",
                        help="with the credential key in the settings: read the new key (base64 of 32 bytes) "
                             "from the first line of standard input")
    parser.set_defaults(run=run)


class RotationError(Exception):
    pass


def _settings(args: argparse.Namespace) -> Any:
    from config.settings import load

    server = {"data_dir": args.data_dir} if args.data_dir else {}
    return load(getattr(args, "config", None), server=server)


def rotate_credential_key(settings: Any, new_key_text: str | None = None) -> dict[str, int]:
    """Re-encrypt every stored secret under a new credential key (see the module's docstring).
    The counts of what was re-encrypted. Raises RotationError with what to do."""
    from dashboard.repositories import Repositories
    from dashboard.security.secrets import (
        CREDENTIAL_KEY_FILE, ROTATING_SUFFIX, DecryptionFailed, Secrets, credential_key_of, decode_credential_key,
        generate_credential_key, secret_key_of, write_key_file,
    )
    from engine import make_engine, running_nodes

    db = make_engine(settings.database_url)
    try:
        running = running_nodes(db, time.time())
    finally:
        db.dispose()
    if running:
        raise RotationError("stop the gateway first: a gateway runs on this database: " + "; ".join(running))
    configured = bool(settings.security.credential_key)
    if configured and not new_key_text:
        raise RotationError("the credential key is set in the settings: give the new one with --new-key-stdin")
    if not configured and new_key_text:
        raise RotationError("--new-key-stdin is for a credential key set in the settings; this one is in "
                            f"{settings.data_path / CREDENTIAL_KEY_FILE}, and the command makes the next one")
    secret_key = secret_key_of(settings)
    old_text, where = credential_key_of(settings)
    pending = settings.data_path / (CREDENTIAL_KEY_FILE + ROTATING_SUFFIX)
    if configured:
        new_text = new_key_text.strip()  # type: ignore[union-attr]
    elif pending.exists():  # an earlier rotation stopped between the database and the file
        new_text = pending.read_text().strip()
    else:
        new_text = generate_credential_key()
        write_key_file(pending, new_text)
    old = Secrets(secret_key, decode_credential_key(old_text, where))
    new = Secrets(secret_key, decode_credential_key(new_text, "the new credential key"))
    if new_text == old_text:
        raise RotationError("the new credential key is the current one")
    repositories = Repositories.open(settings.database_url, old)
    try:
        try:
            counts = repositories.reencrypt(new)
        except DecryptionFailed as under_old:
            # Under the new key already? (the interrupted rotation committed): then this is a no-op
            try:
                counts = repositories.reencrypt(new, old=new)
            except DecryptionFailed:
                raise RotationError(f"{under_old}, nor with the new one: restore the key file that goes with "
                                    "this database (docs/operations.md, Backup and restore)") from under_old
    finally:
        repositories.close()
    if not configured:
        write_key_file(settings.data_path / CREDENTIAL_KEY_FILE, new_text)
        pending.unlink()
    return counts


def rotate_secret_key(settings: Any) -> None:
    from dashboard.security.secrets import SECRET_KEY_FILE, ensure_data_dir, generate_secret_key, write_key_file

    if settings.security.secret_key:
        raise RotationError("the secret key is set in the settings (security.secret_key): put a new one there, "
                            "at least 16 random characters")
    write_key_file(ensure_data_dir(settings.data_path) / SECRET_KEY_FILE, generate_secret_key())


def run(args: argparse.Namespace) -> int:
    from config.settings import SettingsError
    from dashboard.security.secrets import KeyMaterialError

    try:
        settings = _settings(args)
        if args.key == "credential":
            new_key = sys.stdin.readline().strip() if args.new_key_stdin else None
            counts = rotate_credential_key(settings, new_key)
            done = ", ".join(f"{count} {what}" for what, count in counts.items())
            print(f"credential key rotated: re-encrypted {done}")
            if settings.security.credential_key:
                print("now set security.credential_key (or COSESSION_SECURITY_CREDENTIAL_KEY) to the new key, "
                      "then start the gateway")
        else:
            rotate_secret_key(settings)
            print("secret key rotated: at the next start, everyone signs in again and earlier share links stop "
                  "working")
    except (SettingsError, KeyMaterialError, RotationError, OSError) as exc:
        print(f"cosession keys: {exc}", file=sys.stderr)
        return 1
    return 0
