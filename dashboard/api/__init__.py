"""The JSON API under ``/api/``: the dashboard's data and actions for scripts (docs/api.md).

Same authorisation as the pages: the session cookie from ``POST /api/login`` (api/account.py),
``X-CSRF-Token`` on every unsafe method (security/csrf.py). Errors are JSON,
``{"error": REASON, "detail": TEXT}``, with 400 (bad input), 401 (not signed in), 403 (not
allowed), 404 (no such thing), 409 (not in a state for it), 415 (not JSON), 503/504 (the engine
is not running / did not answer).

On the loop: the database through ``trio.to_thread.run_sync``; the engine only through its
non-blocking calls (``live_sessions``, ``session``, ``route``), its answers bridged back with
``services.bridge``.

The modules: `common` (errors, input), `account` (sign-in), `sessions` (live sessions and
connections), `endpoints`, `audit`.
"""

from __future__ import annotations

from starlette.routing import Route

from dashboard.api import account, audit, endpoints, sessions

routes = [
    Route("/api/login", account.api_login, methods=["POST"], name="api_login"),
    Route("/api/logout", account.api_logout, methods=["POST"], name="api_logout"),
    Route("/api/me", account.api_me, methods=["GET"], name="api_me"),
    Route("/api/sessions", sessions.list_sessions, methods=["GET"], name="api_sessions"),
    Route("/api/sessions/{session_id}", sessions.session_detail, methods=["GET"], name="api_session"),
    Route("/api/sessions/{session_id}/terminate", sessions.terminate_session, methods=["POST"], name="api_session_terminate"),
    Route("/api/connections", sessions.list_connections, methods=["GET"], name="api_connections"),
    Route("/api/endpoints", endpoints.list_endpoints, methods=["GET"], name="api_endpoints"),
    Route("/api/endpoints", endpoints.create_endpoint, methods=["POST"], name="api_endpoint_create"),
    Route("/api/endpoints/{endpoint_id}", endpoints.get_endpoint, methods=["GET"], name="api_endpoint"),
    Route("/api/endpoints/{endpoint_id}", endpoints.update_endpoint, methods=["PUT", "PATCH"], name="api_endpoint_update"),
    Route("/api/endpoints/{endpoint_id}", endpoints.delete_endpoint, methods=["DELETE"], name="api_endpoint_delete"),
    Route("/api/endpoints/{endpoint_id}/joint-session", endpoints.set_joint_session, methods=["POST"],
          name="api_endpoint_joint_session"),
    Route("/api/audit", audit.list_audit, methods=["GET"], name="api_audit"),
    Route("/api/audit/export", audit.export_audit, methods=["GET"], name="api_audit_export"),
    Route("/api/audit/verify", audit.verify_audit, methods=["GET"], name="api_audit_verify"),
]
