"""The access model's repository: who holds which role and profile on which endpoint, groups,
approval policies and approvers, requests for access and their extensions, TOTP enrolment,
and each user's last launch parameters.

``Access`` is sync SQLAlchemy Core (on the trio loop call it through
``trio.to_thread.run_sync``). It gathers `engine.access.AccessFacts` in a few queries and lets
the pure functions of `engine/access.py` decide; it never decides itself. docs/access.md
describes the model; every write here is checked, and the pages audit what they do.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable

import pyotp
import sqlalchemy as sa

from dashboard.security.secrets import Secrets
from engine import access as rules
from engine.access import (AccessFacts, Approval, ApprovalState, AssetRole, LaunchParameters, Profile,
                           TotpAccepted, WebSession)
from engine.db import access_extensions as t_ext
from engine.db import access_profiles as t_profiles
from engine.db import access_requests as t_requests
from engine.db import approval_policies as t_policies
from engine.db import asset_roles as t_roles
from engine.db import endpoint_access as t_legacy
from engine.db import endpoint_approvers as t_approvers
from engine.db import endpoints as t_endpoints
from engine.db import group_members as t_members
from engine.db import groups as t_groups
from engine.db import launch_parameters as t_params
from engine.db import mfa_secrets as t_mfa
from engine.db import profile_assignments as t_assign
from engine.db import users as t_users
from engine.messages import Reason, Refused, User

log = logging.getLogger(__name__)

STANDARD_PROFILE = "Standard"  # web session allowed, nothing else: what a plain grant gives
USER, GROUP = "user", "group"
TOTP_ISSUER = "cosession"


class AccessError(ValueError):
    """An access change cannot be made as asked; the message says why, for an administrator."""


@dataclass(frozen=True, slots=True)
class Principal:
    """A user or a group, as named on the administrators' pages."""

    kind: str  # 'user' | 'group'
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class RoleEntry:
    principal: Principal
    role: AssetRole


@dataclass(frozen=True, slots=True)
class AssignmentEntry:
    principal: Principal
    profile: Profile


@dataclass(frozen=True, slots=True)
class Group:
    id: str
    name: str
    members: tuple[User, ...] = ()


@dataclass(frozen=True, slots=True)
class AccessRequest:
    """A request for access as stored, with names for the pages."""

    id: str
    user: User
    endpoint_id: str
    endpoint_name: str
    reason: str
    window_start: float
    window_end: float
    state: ApprovalState  # as stored; `effective_state` says what it is now
    requested_at: float
    decided_at: float | None
    approver_name: str | None

    @property
    def approval(self) -> Approval:
        return Approval(self.state, self.window_start, self.window_end, self.id)

    def effective_state(self, now: float) -> ApprovalState:
        """Pending or approved past the window's end is expired, whatever the row says."""
        if self.state in (ApprovalState.PENDING, ApprovalState.APPROVED) and now >= self.window_end:
            return ApprovalState.EXPIRED
        return self.state


@dataclass(frozen=True, slots=True)
class Extension:
    id: str
    request_id: str
    session_id: str | None
    user: User
    endpoint_id: str
    endpoint_name: str
    until: float
    reason: str
    state: ApprovalState
    requested_at: float
    current_end: float  # the approval's window end when this was read


def _new_id() -> str:
    return str(uuid.uuid4())


def _profile(row: Any) -> Profile:
    return Profile(name=row.name, web_session=WebSession(row.web_session), clipboard_upload=bool(row.clipboard_upload),
                   clipboard_download=bool(row.clipboard_download), file_transfer=bool(row.file_transfer),
                   mfa_required=bool(row.mfa_required), id=row.id)


def _parameters(text: str | None) -> LaunchParameters | None:
    if not text:
        return None
    try:
        return dataclasses.replace(rules.DEFAULT_PARAMETERS, **json.loads(text))
    except (ValueError, TypeError):
        return None  # a row from an older version: fall back to the defaults


class Access:
    def __init__(self, db: sa.Engine, secrets: Secrets) -> None:
        self._db = db
        self._secrets = secrets

    # --- what is known of a user ---------------------------------------------------------------

    def _group_ids(self, db: sa.Connection, user_id: str) -> list[str]:
        return list(db.execute(sa.select(t_members.c.group_id).where(t_members.c.user_id == user_id)).scalars())

    @staticmethod
    def _principal_filter(table: sa.Table, user_id: str, group_ids: list[str]) -> Any:
        return sa.or_(sa.and_(table.c.principal_kind == USER, table.c.principal_id == user_id),
                      sa.and_(table.c.principal_kind == GROUP, table.c.principal_id.in_(group_ids)))

    def facts(self, user: User, endpoint_id: str) -> AccessFacts:
        """Everything `engine.access` needs about `user` on one endpoint."""
        return self.facts_for(user, [endpoint_id]).get(endpoint_id, AccessFacts())

    def facts_for(self, user: User, endpoint_ids: Iterable[str] | None = None) -> dict[str, AccessFacts]:
        """Facts for many endpoints at once (every endpoint when `endpoint_ids` is None), in a
        fixed number of queries: for the lists that show an Access button per row."""
        with self._db.connect() as db:
            groups = self._group_ids(db, user.id)
            endpoint_query = sa.select(t_endpoints.c.id, t_endpoints.c.secret_kind, t_endpoints.c.protocol)
            if endpoint_ids is not None:
                endpoint_query = endpoint_query.where(t_endpoints.c.id.in_(list(endpoint_ids)))
            endpoints = {r.id: r for r in db.execute(endpoint_query)}
            ids = list(endpoints)
            roles: dict[str, list[AssetRole]] = defaultdict(list)
            for r in db.execute(sa.select(t_roles.c.endpoint_id, t_roles.c.role).where(
                    t_roles.c.endpoint_id.in_(ids), self._principal_filter(t_roles, user.id, groups))):
                roles[r.endpoint_id].append(AssetRole(r.role))
            profiles: dict[str, dict[str, Profile]] = defaultdict(dict)
            for r in db.execute(sa.select(t_assign.c.endpoint_id, *t_profiles.c)
                                .join(t_profiles, t_profiles.c.id == t_assign.c.profile_id)
                                .where(t_assign.c.endpoint_id.in_(ids),
                                       self._principal_filter(t_assign, user.id, groups))):
                profiles[r.endpoint_id][r.id] = _profile(r)  # one profile counts once, however assigned
            approval = {r.endpoint_id for r in db.execute(sa.select(t_policies.c.endpoint_id).where(
                t_policies.c.endpoint_id.in_(ids), t_policies.c.requires_approval.is_(True)))}
            requests: dict[str, list[Approval]] = defaultdict(list)
            for r in db.execute(sa.select(t_requests).where(
                    t_requests.c.user_id == user.id, t_requests.c.endpoint_id.in_(ids))
                    .order_by(t_requests.c.requested_at, t_requests.c.id)):
                requests[r.endpoint_id].append(Approval(ApprovalState(r.state), r.window_start, r.window_end, r.id))
            enrolled = db.execute(sa.select(t_mfa.c.user_id).where(
                t_mfa.c.user_id == user.id, t_mfa.c.confirmed.is_(True))).first() is not None
            params = {r.endpoint_id: _parameters(r.parameters) for r in db.execute(
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
            groups = self._group_ids(db, user.id)
            return set(db.execute(sa.select(t_roles.c.endpoint_id).where(
                self._principal_filter(t_roles, user.id, groups))).scalars())

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

    # --- groups ---------------------------------------------------------------------------------

    def create_group(self, name: str) -> Group:
        name = name.strip()
        if not name or len(name) > 128:
            raise AccessError("a group name is 1 to 128 characters")
        group = Group(_new_id(), name)
        try:
            with self._db.begin() as db:
                db.execute(t_groups.insert().values(id=group.id, name=name, created_at=time.time()))
        except sa.exc.IntegrityError:
            raise AccessError(f"a group named {name!r} already exists") from None
        return group

    def delete_group(self, group_id: str) -> bool:
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

    # --- principals -----------------------------------------------------------------------------

    def principal(self, kind: str, name_or_id: str) -> Principal | None:
        """A user or a group by name or id."""
        table = t_users if kind == USER else t_groups if kind == GROUP else None
        if table is None:
            raise AccessError("a principal is a user or a group")
        with self._db.connect() as db:
            row = db.execute(sa.select(table.c.id, table.c.name).where(
                sa.or_(table.c.name == name_or_id, table.c.id == name_or_id))).first()
        return Principal(kind, row.id, row.name) if row is not None else None

    def _names(self, db: sa.Connection, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        pairs = list(pairs)
        names: dict[tuple[str, str], str] = {}
        for kind, table in ((USER, t_users), (GROUP, t_groups)):
            ids = [pid for k, pid in pairs if k == kind]
            if ids:
                for r in db.execute(sa.select(table.c.id, table.c.name).where(table.c.id.in_(ids))):
                    names[(kind, r.id)] = r.name
        return names

    def _check_endpoint(self, db: sa.Connection, endpoint_id: str) -> None:
        if db.execute(sa.select(t_endpoints.c.id).where(t_endpoints.c.id == endpoint_id)).first() is None:
            raise AccessError("no such endpoint")

    # --- roles ------------------------------------------------------------------------------------

    def set_role(self, endpoint_id: str, principal: Principal, role: AssetRole | str | None) -> None:
        """Give `principal` `role` on the endpoint (replacing any), or take it away (None)."""
        with self._db.begin() as db:
            self._check_endpoint(db, endpoint_id)
            db.execute(t_roles.delete().where(t_roles.c.endpoint_id == endpoint_id,
                                              t_roles.c.principal_kind == principal.kind,
                                              t_roles.c.principal_id == principal.id))
            if role is not None:
                db.execute(t_roles.insert().values(endpoint_id=endpoint_id, principal_kind=principal.kind,
                                                   principal_id=principal.id, role=AssetRole(role).value))

    def roles_on(self, endpoint_id: str) -> list[RoleEntry]:
        with self._db.connect() as db:
            rows = db.execute(sa.select(t_roles).where(t_roles.c.endpoint_id == endpoint_id)).all()
            names = self._names(db, ((r.principal_kind, r.principal_id) for r in rows))
        entries = [RoleEntry(Principal(r.principal_kind, r.principal_id,
                                       names.get((r.principal_kind, r.principal_id), "?")), AssetRole(r.role))
                   for r in rows]
        return sorted(entries, key=lambda e: (e.principal.kind, e.principal.name))

    def role(self, user: User, endpoint_id: str) -> AssetRole | None:
        return self.facts(user, endpoint_id).role

    # --- profiles ---------------------------------------------------------------------------------

    def create_profile(self, name: str, web_session: WebSession | str = WebSession.DENY, *,
                       clipboard_upload: bool = False, clipboard_download: bool = False,
                       file_transfer: bool = False, mfa_required: bool = False) -> Profile:
        values = self._profile_values(name, web_session, clipboard_upload, clipboard_download, file_transfer,
                                      mfa_required)
        profile_id = _new_id()
        try:
            with self._db.begin() as db:
                db.execute(t_profiles.insert().values(id=profile_id, **values))
        except sa.exc.IntegrityError:
            raise AccessError(f"a profile named {values['name']!r} already exists") from None
        profile = self.profile(profile_id)
        assert profile is not None
        return profile

    def update_profile(self, profile_id: str, name: str, web_session: WebSession | str, *,
                       clipboard_upload: bool = False, clipboard_download: bool = False,
                       file_transfer: bool = False, mfa_required: bool = False) -> Profile:
        values = self._profile_values(name, web_session, clipboard_upload, clipboard_download, file_transfer,
                                      mfa_required)
        try:
            with self._db.begin() as db:
                if db.execute(t_profiles.update().where(t_profiles.c.id == profile_id).values(**values)).rowcount == 0:
                    raise AccessError("no such profile")
        except sa.exc.IntegrityError:
            raise AccessError(f"a profile named {values['name']!r} already exists") from None
        profile = self.profile(profile_id)
        assert profile is not None
        return profile

    @staticmethod
    def _profile_values(name: str, web_session: WebSession | str, clipboard_upload: bool, clipboard_download: bool,
                        file_transfer: bool, mfa_required: bool) -> dict[str, Any]:
        name = name.strip()
        if not name or len(name) > 128:
            raise AccessError("a profile name is 1 to 128 characters")
        try:
            setting = WebSession(web_session)
        except ValueError:
            raise AccessError("web session is deny, allow or record") from None
        return dict(name=name, web_session=setting.value, clipboard_upload=bool(clipboard_upload),
                    clipboard_download=bool(clipboard_download), file_transfer=bool(file_transfer),
                    mfa_required=bool(mfa_required))

    def delete_profile(self, profile_id: str) -> bool:
        with self._db.begin() as db:
            db.execute(t_assign.delete().where(t_assign.c.profile_id == profile_id))
            return db.execute(t_profiles.delete().where(t_profiles.c.id == profile_id)).rowcount > 0

    def profiles(self) -> list[Profile]:
        with self._db.connect() as db:
            return [_profile(r) for r in db.execute(sa.select(t_profiles).order_by(t_profiles.c.name))]

    def profile(self, profile_id_or_name: str) -> Profile | None:
        with self._db.connect() as db:
            row = db.execute(sa.select(t_profiles).where(sa.or_(
                t_profiles.c.id == profile_id_or_name, t_profiles.c.name == profile_id_or_name))).first()
        return _profile(row) if row is not None else None

    def standard_profile(self) -> Profile:
        """The profile a plain grant assigns (web session allowed, nothing else), made on first use."""
        found = self.profile(STANDARD_PROFILE)
        if found is not None:
            return found
        try:
            return self.create_profile(STANDARD_PROFILE, WebSession.ALLOW)
        except AccessError:  # made by someone else meanwhile
            found = self.profile(STANDARD_PROFILE)
            assert found is not None
            return found

    # --- assignments --------------------------------------------------------------------------------

    def assign(self, endpoint_id: str, principal: Principal, profile_id: str) -> bool:
        """Assign a profile to a principal on an endpoint. True if it was not assigned before."""
        try:
            with self._db.begin() as db:
                self._check_endpoint(db, endpoint_id)
                db.execute(t_assign.insert().values(endpoint_id=endpoint_id, principal_kind=principal.kind,
                                                    principal_id=principal.id, profile_id=profile_id))
        except sa.exc.IntegrityError:
            if self.profile(profile_id) is None:
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
            names = self._names(db, ((r.principal_kind, r.principal_id) for r in rows))
        entries = [AssignmentEntry(Principal(r.principal_kind, r.principal_id,
                                             names.get((r.principal_kind, r.principal_id), "?")), _profile(r))
                   for r in rows]
        return sorted(entries, key=lambda e: (e.principal.kind, e.principal.name, e.profile.name))

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
        self.assign(endpoint_id, principal, profile_id or self.standard_profile().id)
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

    # --- approval policy and approvers --------------------------------------------------------------

    def set_requires_approval(self, endpoint_id: str, required: bool) -> None:
        with self._db.begin() as db:
            self._check_endpoint(db, endpoint_id)
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
                self._check_endpoint(db, endpoint_id)
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
            names = self._names(db, ((r.principal_kind, r.principal_id) for r in rows))
        return sorted((Principal(r.principal_kind, r.principal_id, names.get((r.principal_kind, r.principal_id), "?"))
                       for r in rows), key=lambda p: (p.kind, p.name))

    def approver_of(self, user: User) -> set[str]:
        """The endpoints for which `user` holds the approver right (directly or by a group)."""
        with self._db.connect() as db:
            groups = self._group_ids(db, user.id)
            return set(db.execute(sa.select(t_approvers.c.endpoint_id).where(
                self._principal_filter(t_approvers, user.id, groups))).scalars())

    # --- requests for access ---------------------------------------------------------------------------

    def _request_query(self) -> sa.Select:
        approver = t_users.alias("approver")
        return (sa.select(t_requests, t_users.c.name.label("user_name"), t_users.c.is_admin.label("user_admin"),
                          t_endpoints.c.name.label("endpoint_name"), approver.c.name.label("approver_name"))
                .join(t_users, t_users.c.id == t_requests.c.user_id)
                .join(t_endpoints, t_endpoints.c.id == t_requests.c.endpoint_id)
                .outerjoin(approver, approver.c.id == t_requests.c.approver_id))

    @staticmethod
    def _request(r: Any) -> AccessRequest:
        return AccessRequest(r.id, User(r.user_id, r.user_name, bool(r.user_admin)), r.endpoint_id, r.endpoint_name,
                             r.reason, r.window_start, r.window_end, ApprovalState(r.state), r.requested_at,
                             r.decided_at, r.approver_name)

    def create_request(self, user: User, endpoint_id: str, window_start: float, window_end: float, reason: str,
                       now: float) -> AccessRequest | Refused:
        refused = rules.check_request(window_start, window_end, reason, now)
        if refused is not None:
            return refused
        request_id = _new_id()
        with self._db.begin() as db:
            self._check_endpoint(db, endpoint_id)
            db.execute(t_requests.insert().values(
                id=request_id, user_id=user.id, endpoint_id=endpoint_id, reason=reason.strip(),
                window_start=float(window_start), window_end=float(window_end), state=ApprovalState.PENDING.value,
                requested_at=float(now)))
        found = self.request(request_id)
        assert found is not None
        return found

    def request(self, request_id: str) -> AccessRequest | None:
        with self._db.connect() as db:
            row = db.execute(self._request_query().where(t_requests.c.id == request_id)).first()
        return self._request(row) if row is not None else None

    def requests_of(self, user: User, limit: int = 50) -> list[AccessRequest]:
        with self._db.connect() as db:
            rows = db.execute(self._request_query().where(t_requests.c.user_id == user.id)
                              .order_by(t_requests.c.requested_at.desc()).limit(limit)).all()
        return [self._request(r) for r in rows]

    def pending_for(self, approver: User, now: float) -> list[AccessRequest]:
        """Requests awaiting a decision on the endpoints `approver` approves, oldest first."""
        endpoints = self.approver_of(approver)
        if not endpoints:
            return []
        with self._db.connect() as db:
            rows = db.execute(self._request_query().where(
                t_requests.c.endpoint_id.in_(endpoints), t_requests.c.state == ApprovalState.PENDING.value,
                t_requests.c.window_end > now).order_by(t_requests.c.requested_at)).all()
        return [self._request(r) for r in rows]

    def decide(self, request_id: str, approver: User, approve: bool, now: float) -> AccessRequest | Refused:
        """Approve or deny a pending request (engine.access.may_decide). The update is
        conditional on the row still being pending, so two approvers cannot both decide."""
        found = self.request(request_id)
        if found is None:
            return Refused(Reason.UNKNOWN_MESSAGE, "no such request")
        refused = rules.may_decide(found.endpoint_id in self.approver_of(approver), found.user.id, approver.id,
                                   found.state, found.window_end, now)
        if refused is not None:
            return refused
        with self._db.begin() as db:
            done = self._mark_decided(db, t_requests, request_id, approver, approve, now)
        if not done:
            return Refused(Reason.ALREADY_DECIDED, "this request is no longer pending")
        decided = self.request(request_id)
        assert decided is not None
        return decided

    @staticmethod
    def _mark_decided(db: sa.Connection, table: sa.Table, row_id: str, approver: User, approve: bool,
                      now: float) -> bool:
        """Pending → approved or denied, only if still pending: two approvers cannot both decide."""
        state = ApprovalState.APPROVED if approve else ApprovalState.DENIED
        return db.execute(table.update().where(table.c.id == row_id, table.c.state == ApprovalState.PENDING.value)
                          .values(state=state.value, approver_id=approver.id, decided_at=float(now))).rowcount > 0

    def cancel_request(self, request_id: str, user: User, now: float) -> bool:
        """The requester withdraws a pending request (it becomes expired)."""
        with self._db.begin() as db:
            return db.execute(t_requests.update().where(
                t_requests.c.id == request_id, t_requests.c.user_id == user.id,
                t_requests.c.state == ApprovalState.PENDING.value)
                .values(state=ApprovalState.EXPIRED.value, decided_at=float(now))).rowcount > 0

    def expire_requests(self, now: float) -> int:
        """Mark requests whose window has ended `expired` (the decisions already treat them so;
        this keeps the stored state honest for the pages and reports)."""
        with self._db.begin() as db:
            return db.execute(t_requests.update().where(
                t_requests.c.state.in_([ApprovalState.PENDING.value, ApprovalState.APPROVED.value]),
                t_requests.c.window_end <= now).values(state=ApprovalState.EXPIRED.value)).rowcount

    # --- extensions -------------------------------------------------------------------------------------

    def request_extension(self, user: User, request_id: str, session_id: str | None, until: float, reason: str,
                          now: float) -> Extension | Refused:
        found = self.request(request_id)
        if found is None or found.user.id != user.id:
            return Refused(Reason.NO_DEADLINE, "this session runs under no approval of yours")
        refused = rules.may_request_extension(found.approval, until, reason, now)
        if refused is not None:
            return refused
        extension_id = _new_id()
        with self._db.begin() as db:
            db.execute(t_ext.insert().values(id=extension_id, request_id=request_id, session_id=session_id,
                                             user_id=user.id, until=float(until), reason=reason.strip(),
                                             state=ApprovalState.PENDING.value, requested_at=float(now)))
        extension = self.extension(extension_id)
        assert extension is not None
        return extension

    def _extension_query(self) -> sa.Select:
        return (sa.select(t_ext, t_users.c.name.label("user_name"), t_users.c.is_admin.label("user_admin"),
                          t_requests.c.endpoint_id, t_requests.c.window_end.label("current_end"),
                          t_endpoints.c.name.label("endpoint_name"))
                .join(t_users, t_users.c.id == t_ext.c.user_id)
                .join(t_requests, t_requests.c.id == t_ext.c.request_id)
                .join(t_endpoints, t_endpoints.c.id == t_requests.c.endpoint_id))

    @staticmethod
    def _extension(r: Any) -> Extension:
        return Extension(r.id, r.request_id, r.session_id, User(r.user_id, r.user_name, bool(r.user_admin)),
                         r.endpoint_id, r.endpoint_name, r.until, r.reason, ApprovalState(r.state), r.requested_at,
                         r.current_end)

    def extension(self, extension_id: str) -> Extension | None:
        with self._db.connect() as db:
            row = db.execute(self._extension_query().where(t_ext.c.id == extension_id)).first()
        return self._extension(row) if row is not None else None

    def extensions_for(self, approver: User, now: float) -> list[Extension]:
        endpoints = self.approver_of(approver)
        if not endpoints:
            return []
        with self._db.connect() as db:
            rows = db.execute(self._extension_query().where(
                t_requests.c.endpoint_id.in_(endpoints), t_ext.c.state == ApprovalState.PENDING.value,
                t_requests.c.window_end > now).order_by(t_ext.c.requested_at)).all()
        return [self._extension(r) for r in rows]

    def extensions_of_request(self, request_id: str) -> list[Extension]:
        with self._db.connect() as db:
            rows = db.execute(self._extension_query().where(t_ext.c.request_id == request_id)
                              .order_by(t_ext.c.requested_at)).all()
        return [self._extension(r) for r in rows]

    def decide_extension(self, extension_id: str, approver: User, approve: bool, now: float) -> Extension | Refused:
        """Approve (the approval's window now ends at `until`) or deny an extension. The caller
        then moves the deadline of every live session under that approval (the engine's Extend)."""
        found = self.extension(extension_id)
        if found is None:
            return Refused(Reason.UNKNOWN_MESSAGE, "no such extension request")
        # an extension can be decided while its approval is still open
        refused = rules.may_decide(found.endpoint_id in self.approver_of(approver), found.user.id, approver.id,
                                   found.state, found.current_end, now)
        if refused is not None:
            return refused
        with self._db.begin() as db:
            done = self._mark_decided(db, t_ext, extension_id, approver, approve, now)
            if done and approve:
                db.execute(t_requests.update().where(
                    t_requests.c.id == found.request_id, t_requests.c.state == ApprovalState.APPROVED.value,
                    t_requests.c.window_end < found.until).values(window_end=float(found.until)))
        if not done:
            return Refused(Reason.ALREADY_DECIDED, "this request is no longer pending")
        decided = self.extension(extension_id)
        assert decided is not None
        return decided

    # --- MFA (TOTP) -------------------------------------------------------------------------------------

    def _context(self, user_id: str) -> str:
        return f"mfa:{user_id}"

    def mfa_status(self, user: User) -> str:
        """'none', 'unconfirmed' (enrolment begun, no token accepted yet) or 'enrolled'."""
        with self._db.connect() as db:
            row = db.execute(sa.select(t_mfa.c.confirmed).where(t_mfa.c.user_id == user.id)).first()
        return "none" if row is None else "enrolled" if row.confirmed else "unconfirmed"

    def mfa_begin(self, user: User, now: float) -> str:
        """A new secret for `user`, stored unconfirmed (replacing any earlier one), and its
        otpauth:// URI for the QR code. The secret is shown once, on the enrolment page."""
        secret = pyotp.random_base32()
        blob = self._secrets.encrypt(secret, context=self._context(user.id))
        with self._db.begin() as db:
            db.execute(t_mfa.delete().where(t_mfa.c.user_id == user.id))
            db.execute(t_mfa.insert().values(user_id=user.id, secret=blob, confirmed=False, last_used_step=None,
                                             created_at=float(now)))
        return pyotp.TOTP(secret).provisioning_uri(name=user.name, issuer_name=TOTP_ISSUER)

    def mfa_uri(self, user: User) -> str | None:
        """The otpauth:// URI of an unconfirmed enrolment (to show its QR code again)."""
        with self._db.connect() as db:
            row = db.execute(sa.select(t_mfa.c.secret, t_mfa.c.confirmed).where(t_mfa.c.user_id == user.id)).first()
        if row is None or row.confirmed:
            return None
        secret = self._secrets.decrypt(row.secret, context=self._context(user.id))
        return pyotp.TOTP(secret).provisioning_uri(name=user.name, issuer_name=TOTP_ISSUER)

    def mfa_check(self, user: User, token: str, now: float, *, confirming: bool = False) -> Refused | TotpAccepted:
        """Check a token (engine.access.check_totp) and, if accepted, record its step with a
        compare-and-set, so that one token opens one start even when two arrive at once.
        `confirming`: the first token of an enrolment, which then becomes usable."""
        with self._db.connect() as db:
            row = db.execute(sa.select(t_mfa).where(t_mfa.c.user_id == user.id)).first()
        if row is None or bool(row.confirmed) == confirming:
            secret = None
        else:
            try:
                secret = self._secrets.decrypt(row.secret, context=self._context(user.id))
            except Exception:
                log.warning("the authenticator secret of user %s does not decrypt", user.id)
                secret = None
        answer = rules.check_totp(secret, token, row.last_used_step if row is not None else None, now)
        if isinstance(answer, Refused):
            return answer
        last = t_mfa.c.last_used_step
        with self._db.begin() as db:
            done = db.execute(t_mfa.update().where(  # the secret checked, not one enrolled meanwhile
                t_mfa.c.user_id == user.id, t_mfa.c.secret == row.secret, sa.or_(last.is_(None), last < answer.step))
                .values(last_used_step=answer.step, confirmed=True)).rowcount
        if not done:
            return Refused(Reason.MFA_REUSED, "this token was already used: wait for the next one")
        return answer

    def mfa_remove(self, user_id: str) -> bool:
        with self._db.begin() as db:
            return db.execute(t_mfa.delete().where(t_mfa.c.user_id == user_id)).rowcount > 0

    # --- launch parameters -------------------------------------------------------------------------------

    def save_parameters(self, user: User, endpoint_id: str, parameters: LaunchParameters, now: float) -> None:
        text = json.dumps(dataclasses.asdict(parameters), sort_keys=True)
        with self._db.begin() as db:
            db.execute(t_params.delete().where(t_params.c.user_id == user.id, t_params.c.endpoint_id == endpoint_id))
            db.execute(t_params.insert().values(user_id=user.id, endpoint_id=endpoint_id, parameters=text,
                                                used_at=float(now)))
