"""Send Password: the controller asks for the endpoint's stored password on its own clipboard.

Only the controller's channel can ask (gateway/rights.py), and the access model decides at each
use (`engine.access.may_send_password`: at least supervisor, a profile with clipboard upload;
then `password_lock`: on an endpoint that requires approval, an open approved request). The
answer goes to that one websocket, never through the engine; each use is a `decrypt_field`
audit event. The session page offers the button as `password_offer` says
(dashboard/services/password_offer.py); a locked password is answered with the refusal and what
the button offers now (Request Access, Waiting for Approval).
"""

from __future__ import annotations

import trio

from dashboard.gateway.channel import Channel
from dashboard.services.live_sessions import LiveSession
from dashboard.services.password_offer import password_offer
from engine.access import may_send_password, password_lock
from engine.messages import Reason, Refused

# the refusals of the unlock workflow: the page's button then offers what to do about them
LOCKED = frozenset({Reason.APPROVAL_REQUIRED, Reason.APPROVAL_PENDING, Reason.APPROVAL_DENIED,
                    Reason.APPROVAL_EXPIRED})


async def send_password(channel: Channel, live: LiveSession, size: int) -> None:
    """The stored password, to `channel` only, if the access model allows it now."""
    services, user, endpoint = channel.services, channel.user, live.endpoint

    def decide() -> tuple[Refused | None, str | None]:
        facts = services.access.facts(user, endpoint.id)
        refused = may_send_password(facts.role, facts.profile) or password_lock(facts, services.now())
        if refused is not None:
            return refused, None
        credentials = services.endpoints.stored_credentials(endpoint.id)
        if credentials is None or not credentials.password:
            return Refused(Reason.NO_STORED_PASSWORD, "this endpoint stores no password"), None
        return None, credentials.password

    refused, password = await trio.to_thread.run_sync(decide)
    if channel.closed:
        return
    if refused is not None:
        channel.refuse_queued(refused.reason, refused.detail, "send_password", size)
        if refused.reason in LOCKED:
            stored = await trio.to_thread.run_sync(services.endpoints.get, endpoint.id)
            offer = None if stored is None else await trio.to_thread.run_sync(password_offer, services, user, stored)
            if not channel.closed:
                channel.post({"type": "password_state", "offer": offer})
        return
    services.audit_event("decrypt_field", user, live.session_id, endpoint_id=endpoint.id,
                         endpoint_name=endpoint.name, field="password", purpose="send_password")
    if services.settings.recordings.record_input:
        channel.sent_password = password.encode()
    channel.post({"type": "password", "password": password})
