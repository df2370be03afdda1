"""Whose page is asking: the Origin checks of unsafe HTTP requests (security/csrf.py) and of
websocket handshakes (before `accept()`).

    if not check_origin(websocket): ...    # the Origin header must be this server's own
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import HTTPConnection

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _origin(url: str) -> str | None:
    """scheme://host:port, lower case, with the default port written out; None if malformed."""
    try:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
        host = (parts.hostname or "").lower()
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        return None
    if scheme not in ("http", "https") or not host or port is None:
        return None
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def own_origins(conn: HTTPConnection) -> set[str]:
    """This server's origins: the configured public URL's (``app.state.services.public_url``),
    and the one the client addressed (its scheme and Host header; a browser cannot forge the
    Host of another site's request)."""
    origins: set[str] = set()
    services = getattr(conn.app.state, "services", None)
    public_url: str = getattr(services, "public_url", "")
    if public_url:
        public = _origin(public_url)
        if public:
            origins.add(public)
    host = conn.headers.get("host")
    if host:
        addressed = _origin(f"{conn.url.scheme}://{host}")
        if addressed:
            origins.add(addressed)
    return origins


def same_origin(conn: HTTPConnection) -> bool:
    """True if the request's Origin header names this server (False if there is none)."""
    origin = conn.headers.get("origin")
    if not origin or origin == "null":
        return False
    normalised = _origin(origin)
    return normalised is not None and normalised in own_origins(conn)


def check_origin(websocket: HTTPConnection) -> bool:
    """For websockets, before `accept()`: the Origin must equal this server's own origin.
    Browsers always send Origin on a websocket handshake; a missing one is refused too."""
    return same_origin(websocket)
