"""What the access model's repositories share: principals (a user or a group), new ids, and the
error an administrator sees when a change cannot be made.

A principal's id names a row of `users` or of `groups` by its kind, so the tables that hold
principals have no foreign key to them: whoever deletes a user or a group removes its rows
there in the same transaction (`Groups.delete_group`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Iterable

import sqlalchemy as sa

from dashboard.repositories.tables import endpoints as t_endpoints
from dashboard.repositories.tables import group_members as t_members
from dashboard.repositories.tables import groups as t_groups
from dashboard.repositories.tables import users as t_users

USER, GROUP = "user", "group"


class AccessError(ValueError):
    """An access change cannot be made as asked; the message says why, for an administrator."""


@dataclass(frozen=True, slots=True)
class Principal:
    """A user or a group, as named on the administrators' pages."""

    kind: str  # 'user' | 'group'
    id: str
    name: str


def new_id() -> str:
    return str(uuid.uuid4())


def group_ids(db: sa.Connection, user_id: str) -> list[str]:
    """The groups `user_id` is a member of."""
    return list(db.execute(sa.select(t_members.c.group_id).where(t_members.c.user_id == user_id)).scalars())


def held_by(table: sa.Table, user_id: str, groups: list[str]) -> Any:
    """Rows of a principal table that name the user or one of their groups."""
    return sa.or_(sa.and_(table.c.principal_kind == USER, table.c.principal_id == user_id),
                  sa.and_(table.c.principal_kind == GROUP, table.c.principal_id.in_(groups)))


def principal_names(db: sa.Connection, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """The names of (kind, id) principals, in one query per kind."""
    pairs = list(pairs)
    names: dict[tuple[str, str], str] = {}
    for kind, table in ((USER, t_users), (GROUP, t_groups)):
        ids = [pid for k, pid in pairs if k == kind]
        if ids:
            for r in db.execute(sa.select(table.c.id, table.c.name).where(table.c.id.in_(ids))):
                names[(kind, r.id)] = r.name
    return names


def named(rows: Iterable[Any], names: dict[tuple[str, str], str]) -> list[Principal]:
    """The principal of each row (with principal_kind and principal_id), with its name."""
    return [Principal(r.principal_kind, r.principal_id, names.get((r.principal_kind, r.principal_id), "?"))
            for r in rows]


def check_endpoint(db: sa.Connection, endpoint_id: str) -> None:
    if db.execute(sa.select(t_endpoints.c.id).where(t_endpoints.c.id == endpoint_id)).first() is None:
        raise AccessError("no such endpoint")
