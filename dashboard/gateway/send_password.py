"""Send Password: the controller asks for the endpoint's stored password on its own clipboard.

Only the controller's channel can ask (gateway/rights.py), and the access model decides at each
use (`engine.access.may_send_password`: at least supervisor, a profile with clipboard upload).
The answer goes to that one websocket, never through the engine; each use is a `decrypt_field`
audit event. The session page offers the button when `may_offer` says so.
"""

from __future__ import annotations

import trio

from dashboard.gateway.channel import Channel
from dashboard.repositories.endpoints import Endpoint
from dashboard.services import Services
from dashboard.services.live_sessions import LiveSession
from engine.access import may_send_password
from engine.messages import Reason, Refused, User


def may_offer(services: Services, user: User, endpoint: Endpoint) -> bool:
    """Whether the session page offers Send Password (decided again at each use). Blocking."""
    if endpoint.secret_kind != "password":
        return False
    facts = services.access.facts(user, endpoint.id)
    return may_send_password(facts.role, facts.profile) is None


async def send_password(channel: Channel, live: LiveSession, size: int) -> None:
    """The stored password, to `channel` only, if the access model allows it now."""
    services, user, endpoint = channel.services, channel.user, live.endpoint

    def decide() -> tuple[Refused | None, str | None]:
        facts = services.access.facts(user, endpoint.id)
        refused = may_send_password(facts.role, facts.profile)
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
        return
    services.audit_event("decrypt_field", user, live.session_id, endpoint_id=endpoint.id,
                         endpoint_name=endpoint.name, field="password", purpose="send_password")
    if services.settings.recordings.record_input:
        channel.sent_password = password.encode()
    channel.post({"type": "password", "password": password})
