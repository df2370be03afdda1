"""Who holds which role and which profiles on which endpoint: roles (viewer < user < supervisor
< owner) and profile assignments, given to users or groups; `grant`/`revoke`, the short way for
one user; and the move of the old one-row grants into the model.

Sync SQLAlchemy Core: on the trio loop call it through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import sqlalchemy as sa

from dashboard.repositories.model import (
    GROUP, USER, AccessError, Principal, check_endpoint, named, principal_names,
)
from dashboard.repositories.profiles import STANDARD_PROFILE, Profiles, profile_of
from dashboard.repositories.tables import access_profiles as t_profiles
from dashboard.repositories.tables import asset_roles as t_roles
from dashboard.repositories.tables import endpoint_access as t_legacy
from dashboard.repositories.tables import groups as t_groups
from dashboard.repositories.tables import profile_assignments as t_assign
from dashboard.repositories.tables import users as t_users
from engine.access import AssetRole, Profile

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RoleEntry:
    principal: Principal
    role: AssetRole


@dataclass(frozen=True, slots=True)
class AssignmentEntry:
    principal: Principal
    profile: Profile


class Grants:
    def __init__(self, db: sa.Engine, profiles: Profiles) -> None:
        self._db = db
        self._profiles = profiles

    def principal(self, kind: str, name_or_id: str) -> Principal | None:
        """A user or a group by name or id."""
        table = t_users if kind == USER else t_groups if kind == GROUP else None
        if table is None:
            raise AccessError("a principal is a user or a group")
        with self._db.connect() as db:
            row = db.execute(sa.select(table.c.id, table.c.name).where(
                sa.or_(table.c.name == name_or_id, table.c.id == name_or_id))).first()
        return Principal(kind, row.id, row.name) if row is not None else None

    # --- roles ------------------------------------------------------------------------------------

    def set_role(self, endpoint_id: str, principal: Principal, role: AssetRole | str | None) -> None:
        """Give `principal` `role` on the endpoint (replacing any), or take it away (None)."""
        with self._db.begin() as db:
            check_endpoint(db, endpoint_id)
            db.execute(t_roles.delete().where(t_roles.c.endpoint_id == endpoint_id,
                                              t_roles.c.principal_kind == principal.kind,
                                              t_roles.c.principal_id == principal.id))
            if role is not None:
                db.execute(t_roles.insert().values(endpoint_id=endpoint_id, principal_kind=principal.kind,
                                                   principal_id=principal.id, role=AssetRole(role).value))

    def roles_on(self, endpoint_id: str) -> list[RoleEntry]:
        with self._db.connect() as db:
            rows = db.execute(sa.select(t_roles).where(t_roles.c.endpoint_id == endpoint_id)).all()
            names = principal_names(db, ((r.principal_kind, r.principal_id) for r in rows))
        entries = [RoleEntry(principal, AssetRole(r.role)) for principal, r in zip(named(rows, names), rows)]
        return sorted(entries, key=lambda e: (e.principal.kind, e.principal.name))

    # --- profile assignments --------------------------------------------------------------------

    def assign(self, endpoint_id: str, principal: Principal, profile_id: str) -> bool:
        """Assign a profile to a principal on an endpoint. True if it was not assigned before."""
        try:
            with self._db.begin() as db:
                check_endpoint(db, endpoint_id)
                db.execute(t_assign.insert().values(endpoint_id=endpoint_id, principal_kind=principal.kind,
                                                    principal_id=principal.id, profile_id=profile_id))
        except sa.exc.IntegrityError:
            if self._profiles.profile(profile_id) is None:
                raise AccessError("no such profile") from None
            return False
        return True

    def unassign(self, endpoint_id: str, principal: Principal, profile_id: str) -> bool:
        with self._db.begin() as db:
            return db.execute(t_assign.delete().where(
                t_assign.c.endpoint_id == endpoint_id, t_assign.c.principal_kind == principal.kind,
                t_assign.c.principal_id == principal.id, t_assign.c.profile_id == profile_id)).rowcount > 0

    def assignments_on(self, endpoint_id: str) -> list[AssignmentEntry]:
        with self._db.connect() as db:
            rows = db.execute(sa.select(t_assign.c.principal_kind, t_assign.c.principal_id, *t_profiles.c)
                              .join(t_profiles, t_profiles.c.id == t_assign.c.profile_id)
                              .where(t_assign.c.endpoint_id == endpoint_id)).all()
            names = principal_names(db, ((r.principal_kind, r.principal_id) for r in rows))
        entries = [AssignmentEntry(principal, profile_of(r)) for principal, r in zip(named(rows, names), rows)]
        return sorted(entries, key=lambda e: (e.principal.kind, e.principal.name, e.profile.name))

    # --- one user, the short way ------------------------------------------------------------------

    def grant(self, endpoint_id: str, user_id: str, role: AssetRole | str = AssetRole.USER,
              profile_id: str | None = None) -> bool:
        """The short way to let a user start sessions: `role` (user) and a profile (Standard).
        True if the user had no role there before."""
        with self._db.connect() as db:
            if db.execute(sa.select(t_users.c.id).where(t_users.c.id == user_id)).first() is None:
                raise AccessError("no such user")
        principal = Principal(USER, user_id, "")
        had = any(e.principal.kind == USER and e.principal.id == user_id for e in self.roles_on(endpoint_id))
        self.set_role(endpoint_id, principal, role)
        self.assign(endpoint_id, principal, profile_id or self._profiles.standard_profile().id)
        return not had

    def revoke(self, endpoint_id: str, user_id: str) -> bool:
        """Take away the user's own role and profiles on the endpoint (their groups' remain)."""
        with self._db.begin() as db:
            gone = db.execute(t_roles.delete().where(
                t_roles.c.endpoint_id == endpoint_id, t_roles.c.principal_kind == USER,
                t_roles.c.principal_id == user_id)).rowcount
            gone += db.execute(t_assign.delete().where(
                t_assign.c.endpoint_id == endpoint_id, t_assign.c.principal_kind == USER,
                t_assign.c.principal_id == user_id)).rowcount
        return gone > 0

    def migrate_legacy_grants(self) -> int:
        """Move the rows of the old `endpoint_access` table into the model: each becomes role
        `user` and the Standard profile. Returns how many moved; idempotent."""
        with self._db.connect() as db:
            rows = db.execute(sa.select(t_legacy.c.endpoint_id, t_legacy.c.user_id)).all()
        for row in rows:
            self.grant(row.endpoint_id, row.user_id)
            with self._db.begin() as db:
                db.execute(t_legacy.delete().where(t_legacy.c.endpoint_id == row.endpoint_id,
                                                   t_legacy.c.user_id == row.user_id))
        if rows:
            log.info("moved %d grants from endpoint_access into roles and the %s profile",
                     len(rows), STANDARD_PROFILE)
        return len(rows)
