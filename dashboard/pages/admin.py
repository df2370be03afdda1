"""What the administrators' pages (pages/endpoints.py, pages/access.py) share: an administrator
and the services, and an endpoint or a 404."""

from __future__ import annotations

import trio
from starlette.exceptions import HTTPException
from starlette.requests import Request

from dashboard.repositories.endpoints import Endpoint
from dashboard.security.auth import require_admin
from dashboard.services import Services, services_of
from engine.messages import User


async def admin_services(request: Request) -> tuple[Services, User]:
    """The services, for an administrator (`require_admin`: 403 for anyone else)."""
    admin = await require_admin(request)
    return services_of(request), admin


async def endpoint_or_404(services: Services, endpoint_id: str) -> Endpoint:
    endpoint = await trio.to_thread.run_sync(services.endpoints.get, endpoint_id)
    if endpoint is None:
        raise HTTPException(404, "No such endpoint")
    return endpoint
