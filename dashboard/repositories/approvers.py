"""Approval policies and approvers: whether starting a session on an endpoint needs an approved
request for access, and who (users or groups) holds the approver right there.

Sync SQLAlchemy Core: on the trio loop call it through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import sqlalchemy as sa

from dashboard.repositories.model import Principal, check_endpoint, group_ids, held_by, named, principal_names
from dashboard.repositories.tables import approval_policies as t_policies
from dashboard.repositories.tables import endpoint_approvers as t_approvers
from engine.messages import User


class Approvers:
    def __init__(self, db: sa.Engine) -> None:
        self._db = db

    def set_requires_approval(self, endpoint_id: str, required: bool) -> None:
        with self._db.begin() as db:
            check_endpoint(db, endpoint_id)
            db.execute(t_policies.delete().where(t_policies.c.endpoint_id == endpoint_id))
            if required:
                db.execute(t_policies.insert().values(endpoint_id=endpoint_id, requires_approval=True))

    def requires_approval(self, endpoint_id: str) -> bool:
        with self._db.connect() as db:
            return db.execute(sa.select(t_policies.c.endpoint_id).where(
                t_policies.c.endpoint_id == endpoint_id, t_policies.c.requires_approval.is_(True))).first() is not None

    def add_approver(self, endpoint_id: str, principal: Principal) -> bool:
        try:
            with self._db.begin() as db:
                check_endpoint(db, endpoint_id)
                db.execute(t_approvers.insert().values(endpoint_id=endpoint_id, principal_kind=principal.kind,
                                                       principal_id=principal.id))
        except sa.exc.IntegrityError:
            return False
        return True

    def remove_approver(self, endpoint_id: str, principal: Principal) -> bool:
        with self._db.begin() as db:
            return db.execute(t_approvers.delete().where(
                t_approvers.c.endpoint_id == endpoint_id, t_approvers.c.principal_kind == principal.kind,
                t_approvers.c.principal_id == principal.id)).rowcount > 0

    def approvers_on(self, endpoint_id: str) -> list[Principal]:
        with self._db.connect() as db:
            rows = db.execute(sa.select(t_approvers).where(t_approvers.c.endpoint_id == endpoint_id)).all()
            names = principal_names(db, ((r.principal_kind, r.principal_id) for r in rows))
        return sorted(named(rows, names), key=lambda p: (p.kind, p.name))

    def approver_of(self, user: User) -> set[str]:
        """The endpoints for which `user` holds the approver right (directly or by a group)."""
        with self._db.connect() as db:
            groups = group_ids(db, user.id)
            return set(db.execute(sa.select(t_approvers.c.endpoint_id).where(
                held_by(t_approvers, user.id, groups))).scalars())
