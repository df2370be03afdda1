"""Groups of users: a principal like a user, holding roles, profiles and the approver right
for all its members.

Sync SQLAlchemy Core: on the trio loop call it through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import sqlalchemy as sa

from dashboard.repositories.model import GROUP, AccessError, new_id
from dashboard.repositories.tables import asset_roles as t_roles
from dashboard.repositories.tables import endpoint_approvers as t_approvers
from dashboard.repositories.tables import group_members as t_members
from dashboard.repositories.tables import groups as t_groups
from dashboard.repositories.tables import profile_assignments as t_assign
from dashboard.repositories.tables import users as t_users
from engine.messages import User


@dataclass(frozen=True, slots=True)
class Group:
    id: str
    name: str
    members: tuple[User, ...] = ()


class Groups:
    def __init__(self, db: sa.Engine) -> None:
        self._db = db

    def create_group(self, name: str) -> Group:
        name = name.strip()
        if not name or len(name) > 128:
            raise AccessError("a group name is 1 to 128 characters")
        group = Group(new_id(), name)
        try:
            with self._db.begin() as db:
                db.execute(t_groups.insert().values(id=group.id, name=name, created_at=time.time()))
        except sa.exc.IntegrityError:
            raise AccessError(f"a group named {name!r} already exists") from None
        return group

    def delete_group(self, group_id: str) -> bool:
        """The group and, in the same transaction, every role, profile and approver right it held."""
        with self._db.begin() as db:
            for table in (t_roles, t_assign, t_approvers):
                db.execute(table.delete().where(table.c.principal_kind == GROUP, table.c.principal_id == group_id))
            return db.execute(t_groups.delete().where(t_groups.c.id == group_id)).rowcount > 0

    def groups(self) -> list[Group]:
        with self._db.connect() as db:
            rows = db.execute(sa.select(t_groups.c.id, t_groups.c.name).order_by(t_groups.c.name)).all()
            members: dict[str, list[User]] = defaultdict(list)
            for r in db.execute(sa.select(t_members.c.group_id, t_users.c.id, t_users.c.name, t_users.c.is_admin)
                                .join(t_users, t_users.c.id == t_members.c.user_id).order_by(t_users.c.name)):
                members[r.group_id].append(User(r.id, r.name, bool(r.is_admin)))
        return [Group(r.id, r.name, tuple(members.get(r.id, ()))) for r in rows]

    def group(self, group_id: str) -> Group | None:
        return next((g for g in self.groups() if g.id == group_id), None)

    def add_member(self, group_id: str, user_id: str) -> bool:
        try:
            with self._db.begin() as db:
                db.execute(t_members.insert().values(group_id=group_id, user_id=user_id))
        except sa.exc.IntegrityError:
            with self._db.connect() as db:
                if db.execute(sa.select(t_groups.c.id).where(t_groups.c.id == group_id)).first() is None:
                    raise AccessError("no such group") from None
                if db.execute(sa.select(t_users.c.id).where(t_users.c.id == user_id)).first() is None:
                    raise AccessError("no such user") from None
            return False
        return True

    def remove_member(self, group_id: str, user_id: str) -> bool:
        with self._db.begin() as db:
            return db.execute(t_members.delete().where(
                t_members.c.group_id == group_id, t_members.c.user_id == user_id)).rowcount > 0
