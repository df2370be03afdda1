"""What Send Password offers the controller now (docs/access.md, *Send Password*): nothing (the
endpoint stores no password, or the role or the profile does not allow it), **Send Password**,
or, where the endpoint's unlock workflow applies (it requires approval) and the controller holds
no open approval, **Request Access** (the request screen) or **Waiting for Approval** (its
pending request). The session page starts from it, the gateway answers a locked `send_password`
with it, and the request pages tell a live session's controller when its request changes
(`LiveSessions.password_changed`). The gateway decides again at each use.
"""

from __future__ import annotations

from typing import Any

from dashboard.repositories.endpoints import Endpoint
from dashboard.services import Services
from engine.access import may_send_password, password_lock
from engine.messages import Reason, User


def password_offer(services: Services, user: User, endpoint: Endpoint) -> dict[str, Any] | None:
    """{"state": "send"}, {"state": "request" | "pending", "url", "reason"}, or None. Blocking."""
    if endpoint.secret_kind != "password":
        return None
    facts = services.access.facts(user, endpoint.id)
    if may_send_password(facts.role, facts.profile) is not None:
        return None
    now = services.now()
    locked = password_lock(facts, now)
    if locked is None:
        return {"state": "send"}
    if locked.reason is Reason.APPROVAL_PENDING:
        awaiting = [a for a in facts.requests if a.is_awaiting(now)]  # there is one: it is pending
        return {"state": "pending", "url": f"/access-requests/{awaiting[-1].id}", "reason": locked.reason.value}
    return {"state": "request", "url": f"/access-requests/new?endpoint={endpoint.id}", "reason": locked.reason.value}
