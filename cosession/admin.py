"""Manage accounts and access: create users, give them access to endpoints.

    cosession admin create NAME [--admin] [--password-stdin]
    cosession admin grant USER ENDPOINT [--role ROLE] [--profile PROFILE]
    cosession admin revoke USER ENDPOINT
    cosession admin users

Works on the database directly (the server may be running or not). A generated password is
printed once; with --password-stdin the password is read from the first line of stdin.

`grant` gives USER a role on ENDPOINT (viewer, user, supervisor or owner; default user,
replacing any role of their own there) and assigns them an access profile there (by name or
id; default Standard, web sessions allowed, made on first use): enough to start sessions
unless the endpoint requires approval. `revoke` takes away the user's own role and profiles
there (what their groups give stays). Groups, other profiles and approvers are managed on the
dashboard's Profiles and Groups pages and each endpoint's edit page (docs/access.md).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from engine.access import AssetRole


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", metavar="DIR", help="the data directory (default: server.data_dir)")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    create = actions.add_parser("create", help="create a user (a generated password is printed once)")
    create.add_argument("name")
    create.add_argument("--admin", action="store_true", help="an administrator")
    create.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of standard input")
    create.set_defaults(action_run=_create)

    grant = actions.add_parser("grant", help="give USER a role and a profile on ENDPOINT (by name or id)")
    grant.add_argument("user")
    grant.add_argument("endpoint")
    grant.add_argument("--role", default=AssetRole.USER.value, choices=[role.value for role in AssetRole],
                       help="the user's role on the endpoint (default: %(default)s)")
    grant.add_argument("--profile", metavar="PROFILE",
                       help="an access profile's name or id (default: Standard, made on first use)")
    grant.set_defaults(action_run=_grant)

    revoke = actions.add_parser("revoke", help="take USER's own role and profiles on ENDPOINT away")
    revoke.add_argument("user")
    revoke.add_argument("endpoint")
    revoke.set_defaults(action_run=_revoke)

    users = actions.add_parser("users", help="list users")
    users.set_defaults(action_run=_users)

    parser.set_defaults(run=run)


class _Repos:
    """The repositories on the configured database, without an engine or a server."""

    def __init__(self, args: argparse.Namespace) -> None:
        from config.settings import load
        from dashboard.repositories import Repositories
        from dashboard.security.secrets import Secrets, ensure_data_dir

        server = {"data_dir": args.data_dir} if args.data_dir else {}
        settings = load(getattr(args, "config", None), server=server)
        if settings.database_url.startswith("sqlite:///"):
            ensure_data_dir(settings.data_path)
        self.repositories = Repositories.open(settings.database_url, Secrets.from_settings(settings))
        self.users = self.repositories.users
        self.endpoints = self.repositories.endpoints
        self.grants = self.repositories.grants
        self.profiles = self.repositories.profiles

    def user(self, name: str) -> Any:
        user = self.users.get_by_name(name) or self.users.get(name)
        if user is None:
            raise LookupError(f"no user named {name!r}")
        return user

    def endpoint(self, name: str) -> Any:
        record = self.endpoints.get_by_name(name) or self.endpoints.get(name)
        if record is None:
            raise LookupError(f"no endpoint named {name!r}")
        return record

    def profile(self, name: str | None) -> Any:
        from dashboard.repositories.profiles import STANDARD_PROFILE

        profile = self.profiles.profile(name) if name else None
        if profile is None and name in (None, STANDARD_PROFILE):
            profile = self.profiles.standard_profile()  # made on first use
        if profile is None:
            raise LookupError(f"no profile named {name!r}")
        return profile

    def close(self) -> None:
        self.repositories.close()


def _create(repos: _Repos, args: argparse.Namespace) -> int:
    from dashboard.repositories.accounts import generate_password

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        generated = False
    else:
        password = generate_password()
        generated = True
    user = repos.users.create(args.name, password, is_admin=args.admin)
    kind = "administrator" if user.is_admin else "user"
    print(f"created {kind} {user.name}")
    if generated:
        print(f"password: {password}")
        print("(shown only this once)")
    return 0


def _grant(repos: _Repos, args: argparse.Namespace) -> int:
    user, record, profile = repos.user(args.user), repos.endpoint(args.endpoint), repos.profile(args.profile)
    given = f"role {args.role}, profile {profile.name}"
    if repos.grants.grant(record.id, user.id, args.role, profile.id):
        print(f"{user.name} may now use {record.name} ({given})")
    else:
        print(f"{user.name} already had a role on {record.name}; now {given}")
    return 0


def _revoke(repos: _Repos, args: argparse.Namespace) -> int:
    user, record = repos.user(args.user), repos.endpoint(args.endpoint)
    if repos.grants.revoke(record.id, user.id):
        print(f"{user.name} may no longer use {record.name}")
    else:
        print(f"{user.name} had no access to {record.name}")
    return 0


def _users(repos: _Repos, args: argparse.Namespace) -> int:
    for user in repos.users.list():
        print(f"{user.name}{'  (administrator)' if user.is_admin else ''}")
    return 0


def run(args: argparse.Namespace) -> int:
    from config.settings import SettingsError
    from dashboard.repositories.model import AccessError
    from dashboard.repositories.accounts import AccountError
    from dashboard.repositories.endpoints import EndpointError
    from dashboard.security.secrets import KeyMaterialError

    try:
        repos = _Repos(args)
    except (SettingsError, KeyMaterialError, OSError) as exc:
        print(f"cosession admin: {exc}", file=sys.stderr)
        return 2
    try:
        return args.action_run(repos, args)
    except (AccessError, AccountError, EndpointError, LookupError) as exc:
        print(f"cosession admin: {exc}", file=sys.stderr)
        return 1
    finally:
        repos.close()
