"""Share links: ``{public_url}/sessions/{session_id}?share=TOKEN``.

The token is the session id signed with the server's secret key (itsdangerous, salt
``cosession.share``), so a link names exactly one session and cannot be forged or altered. It
grants nothing by itself: the joiner must be signed in and have access to the endpoint
(rule 3), and the session must still be live. It needs no expiry of its own: it stops working
when its session ends.
"""

from __future__ import annotations

import enum
from typing import Protocol
from urllib.parse import parse_qs, quote, urlsplit

from itsdangerous import BadData

from dashboard.security.secrets import Secrets

SALT = "share"
MAX_TOKEN_CHARS = 1024


class ShareProblem(enum.StrEnum):
    INVALID = "invalid_share_link"  # forged, altered, or for another session


class Site(Protocol):
    """What a share link needs of the application (dashboard.services.Services)."""

    secrets: Secrets
    public_url: str


def make_token(services: Site, session_id: str) -> str:
    return services.secrets.signer(SALT).dumps({"s": session_id})


def share_path(services: Site, session_id: str) -> str:
    return f"/sessions/{quote(session_id, safe='')}?share={make_token(services, session_id)}"


def share_url(services: Site, session_id: str, base_url: str | None = None) -> str:
    base = (base_url if base_url is not None else services.public_url).rstrip("/")
    return base + share_path(services, session_id)


def check_token(services: Site, token: str | None, session_id: str) -> ShareProblem | None:
    """None if `token` is a valid share token for `session_id`."""
    if not token or len(token) > MAX_TOKEN_CHARS:
        return ShareProblem.INVALID
    try:
        payload = services.secrets.signer(SALT).loads(token)
    except BadData:
        return ShareProblem.INVALID
    if not isinstance(payload, dict) or payload.get("s") != session_id:
        return ShareProblem.INVALID
    return None


def parse_share_url(url: str) -> tuple[str, str, str | None]:
    """``(base_url, session_id, token)`` of a share URL (or of a plain session URL)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("a share link starts with http:// or https://")
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) < 2 or segments[-2] != "sessions":
        raise ValueError("a share link looks like http://host/sessions/SESSION?share=TOKEN")
    prefix = "/".join(segments[:-2])
    base = f"{parts.scheme}://{parts.netloc}" + (f"/{prefix}" if prefix else "")
    token = parse_qs(parts.query).get("share", [None])[0]
    return base, segments[-1], token
