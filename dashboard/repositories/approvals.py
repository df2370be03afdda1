"""Requests for access and their extensions: a user asks for a window on an endpoint that
requires approval; an approver of that endpoint (never the requester) approves or denies it; a
controller asks to move an approved window's end. The rules are engine/access.py's
(`check_request`, `may_decide`, `may_request_extension`); a decision is a conditional update,
so two approvers cannot both decide.

Sync SQLAlchemy Core: on the trio loop call it through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from dashboard.repositories.approvers import Approvers
from dashboard.repositories.model import check_endpoint, new_id
from dashboard.repositories.tables import access_extensions as t_ext
from dashboard.repositories.tables import access_requests as t_requests
from dashboard.repositories.tables import endpoints as t_endpoints
from dashboard.repositories.tables import users as t_users
from engine import access as rules
from engine.access import Approval, ApprovalState
from engine.messages import Reason, Refused, User


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



class Approvals:
    def __init__(self, db: sa.Engine, approvers: Approvers) -> None:
        self._db = db
        self._approvers = approvers

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
        request_id = new_id()
        with self._db.begin() as db:
            check_endpoint(db, endpoint_id)
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
        endpoints = self._approvers.approver_of(approver)
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
        refused = rules.may_decide(found.endpoint_id in self._approvers.approver_of(approver), found.user.id, approver.id,
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
        extension_id = new_id()
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
        endpoints = self._approvers.approver_of(approver)
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
        refused = rules.may_decide(found.endpoint_id in self._approvers.approver_of(approver), found.user.id, approver.id,
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
