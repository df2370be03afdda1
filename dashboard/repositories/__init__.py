"""The dashboard's repositories: one per aggregate, each over its own tables (tables.py) in the
same database as the engine's audit log. Sync SQLAlchemy Core: on the trio loop call them
through ``trio.to_thread.run_sync``. They store and read; the access decisions are the pure
functions of engine/access.py, and the pages audit what they change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Self

import sqlalchemy as sa
from argon2 import PasswordHasher

from dashboard.repositories import tables
from dashboard.repositories.access import Access
from dashboard.repositories.accounts import Users
from dashboard.repositories.approvals import Approvals
from dashboard.repositories.approvers import Approvers
from dashboard.repositories.endpoints import Endpoints, JointSessionListener
from dashboard.repositories.grants import Grants
from dashboard.repositories.groups import Groups
from dashboard.repositories.launch_parameters import RememberedParameters
from dashboard.repositories.mfa import Authenticators
from dashboard.repositories.profiles import Profiles
from dashboard.repositories.tools import Tools
from dashboard.security.secrets import Secrets
from engine import make_engine


@dataclass(eq=False)
class Repositories:
    db: sa.Engine
    users: Users
    endpoints: Endpoints
    access: Access  # the access model's facts, for its decisions (read only)
    grants: Grants  # roles and profile assignments
    profiles: Profiles
    groups: Groups
    approvers: Approvers  # approval policies and approvers
    approvals: Approvals  # requests for access and their extensions
    mfa: Authenticators
    launch_parameters: RememberedParameters
    tools: Tools  # the tool library (Send Tool)
    secrets: Secrets = field(repr=False)

    @classmethod
    def open(cls, database_url: str, secrets: Secrets, *, hasher: PasswordHasher | None = None,
             joint_sessions: JointSessionListener | None = None, **more: Any) -> Self:
        """The repositories on `database_url`, every missing table created (the engine's and
        the dashboard's), the old one-row grants moved into the access model. `joint_sessions`
        (the engine) is told joint-session changes; `more` are the fields of a subclass
        (dashboard.services.Services). Blocking."""
        db = make_engine(database_url)
        tables.create(db)
        access = Access(db)
        profiles = Profiles(db)
        approvers = Approvers(db)
        grants = Grants(db, profiles)
        grants.migrate_legacy_grants()
        return cls(db=db, users=Users(db, hasher), endpoints=Endpoints(db, secrets, joint_sessions, access), access=access,
                   grants=grants, profiles=profiles, groups=Groups(db), approvers=approvers,
                   approvals=Approvals(db, approvers), mfa=Authenticators(db, secrets),
                   launch_parameters=RememberedParameters(db), tools=Tools(db), secrets=secrets, **more)

    def reencrypt(self, new: Secrets, old: Secrets | None = None) -> dict[str, int]:
        """Every stored secret (endpoint credentials, authenticator secrets) decrypted with `old`'s
        credential key (by default the current one) and encrypted with `new`'s, in one
        transaction: all or nothing. Blocking. Raises DecryptionFailed if one does not decrypt."""
        old = old if old is not None else self.secrets
        with self.db.begin() as conn:
            return {"endpoint credentials": self.endpoints.reencrypt(conn, old, new),
                    "authenticator secrets": self.mfa.reencrypt(conn, old, new)}

    def close(self) -> None:
        self.db.dispose()
