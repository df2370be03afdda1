"""What the access model knows of a user, for its decisions: `Access` gathers
`engine.access.AccessFacts` (roles, profiles, approval policy and requests, MFA enrolment,
stored credentials, last launch parameters) in a fixed number of queries and lets the pure
functions of engine/access.py decide; it never decides itself and never writes.

The writes are the repositories of each aggregate: `grants` (roles and profile assignments),
`profiles`, `groups`, `approvers` (approval policy and approvers), `approvals` (requests for
access and extensions), `mfa` (authenticators), `launch_parameters`. docs/access.md describes
the model.

Sync SQLAlchemy Core: on the trio loop call it through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import sqlalchemy as sa

from dashboard.repositories.launch_parameters import parameters_of
from dashboard.repositories.model import group_ids, held_by
from dashboard.repositories.profiles import profile_of
from dashboard.repositories.tables import access_profiles as t_profiles
from dashboard.repositories.tables import access_requests as t_requests
from dashboard.repositories.tables import approval_policies as t_policies
from dashboard.repositories.tables import asset_roles as t_roles
from dashboard.repositories.tables import endpoints as t_endpoints
from dashboard.repositories.tables import launch_parameters as t_params
from dashboard.repositories.tables import mfa_secrets as t_mfa
from dashboard.repositories.tables import profile_assignments as t_assign
from engine import access as rules
from engine.access import AccessFacts, Approval, ApprovalState, AssetRole, Profile
from engine.messages import User


class Access:
    def __init__(self, db: sa.Engine) -> None:
        self._db = db

    def facts(self, user: User, endpoint_id: str) -> AccessFacts:
        """Everything `engine.access` needs about `user` on one endpoint."""
        return self.facts_for(user, [endpoint_id]).get(endpoint_id, AccessFacts())

    def facts_for(self, user: User, endpoint_ids: Iterable[str] | None = None) -> dict[str, AccessFacts]:
        """Facts for many endpoints at once (every endpoint when `endpoint_ids` is None), in a
        fixed number of queries: for the lists that show an Access button per row."""
        with self._db.connect() as db:
            groups = group_ids(db, user.id)
            endpoint_query = sa.select(t_endpoints.c.id, t_endpoints.c.secret_kind, t_endpoints.c.protocol)
            if endpoint_ids is not None:
                endpoint_query = endpoint_query.where(t_endpoints.c.id.in_(list(endpoint_ids)))
            endpoints = {r.id: r for r in db.execute(endpoint_query)}
            ids = list(endpoints)
            roles: dict[str, list[AssetRole]] = defaultdict(list)
            for r in db.execute(sa.select(t_roles.c.endpoint_id, t_roles.c.role).where(
                    t_roles.c.endpoint_id.in_(ids), held_by(t_roles, user.id, groups))):
                roles[r.endpoint_id].append(AssetRole(r.role))
            profiles: dict[str, dict[str, Profile]] = defaultdict(dict)
            for r in db.execute(sa.select(t_assign.c.endpoint_id, *t_profiles.c)
                                .join(t_profiles, t_profiles.c.id == t_assign.c.profile_id)
                                .where(t_assign.c.endpoint_id.in_(ids),
                                       held_by(t_assign, user.id, groups))):
                profiles[r.endpoint_id][r.id] = profile_of(r)  # one profile counts once, however assigned
            approval = {r.endpoint_id for r in db.execute(sa.select(t_policies.c.endpoint_id).where(
                t_policies.c.endpoint_id.in_(ids), t_policies.c.requires_approval.is_(True)))}
            requests: dict[str, list[Approval]] = defaultdict(list)
            for r in db.execute(sa.select(t_requests).where(
                    t_requests.c.user_id == user.id, t_requests.c.endpoint_id.in_(ids))
                    .order_by(t_requests.c.requested_at, t_requests.c.id)):
                requests[r.endpoint_id].append(Approval(ApprovalState(r.state), r.window_start, r.window_end, r.id))
            enrolled = db.execute(sa.select(t_mfa.c.user_id).where(
                t_mfa.c.user_id == user.id, t_mfa.c.confirmed.is_(True))).first() is not None
            params = {r.endpoint_id: parameters_of(r.parameters) for r in db.execute(
                sa.select(t_params.c.endpoint_id, t_params.c.parameters).where(
                    t_params.c.user_id == user.id, t_params.c.endpoint_id.in_(ids)))}
        return {
            endpoint_id: AccessFacts.gather(
                roles.get(endpoint_id, ()), profiles.get(endpoint_id, {}).values(),
                requires_approval=endpoint_id in approval, requests=requests.get(endpoint_id, ()),
                mfa_enrolled=enrolled,
                # only SSH asks for credentials; other protocols start without (rfb/rdp: later issues)
                credentials_stored=row.secret_kind is not None or row.protocol != "ssh",
                last_parameters=params.get(endpoint_id))
            for endpoint_id, row in endpoints.items()
        }

    def visible_endpoint_ids(self, user: User) -> set[str]:
        """Endpoints on which `user` holds at least `viewer` (every endpoint for an administrator):
        the ones their lists show and whose sessions they may join."""
        with self._db.connect() as db:
            if user.is_admin:
                return set(db.execute(sa.select(t_endpoints.c.id)).scalars())
            groups = group_ids(db, user.id)
            return set(db.execute(sa.select(t_roles.c.endpoint_id).where(
                held_by(t_roles, user.id, groups))).scalars())

    def visible_facts(self, user: User, endpoint_id: str) -> AccessFacts | None:
        """The facts of `user` on an endpoint they may see (as `may_see`), in one gathering;
        None when the endpoint does not exist or is not theirs to see."""
        facts = self.facts_for(user, [endpoint_id]).get(endpoint_id)
        if facts is None or not (user.is_admin or rules.may_join(facts) is None):
            return None
        return facts

    def may_see(self, user: User, endpoint_id: str) -> bool:
        """May `user` see this endpoint's page and sessions? Administrators see every endpoint;
        others need a role (the same test as joining)."""
        if user.is_admin:
            with self._db.connect() as db:
                return db.execute(sa.select(t_endpoints.c.id).where(t_endpoints.c.id == endpoint_id)).first() \
                    is not None
        return self.may_join(user, endpoint_id)

    def may_join(self, user: User, endpoint_id: str) -> bool:
        """A role of at least viewer (engine.access.may_join); the session's own rules, and the
        administrators' right to watch everything, are the engine's."""
        return rules.may_join(self.facts(user, endpoint_id)) is None

    def role(self, user: User, endpoint_id: str) -> AssetRole | None:
        return self.facts(user, endpoint_id).role
