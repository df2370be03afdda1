"""The websocket gateway: one websocket per participant of a session, and the session pages.

Routes (docs/protocol.md describes the messages):

- ``GET /connect/{endpoint_id}``: the start page (credentials form, then the live terminal);
- ``GET /sessions/{session_id}``: the session page; with ``?share=TOKEN`` (a share link) it
  first shows the join dialog, which opens the session in a new window;
- ``WS /ws/endpoints/{endpoint_id}/start``: the controller starts a session;
- ``WS /ws/sessions/{session_id}``: a viewer joins, or the controller comes back within the
  grace period;
- ``WS /ws/recordings/{session_id}``: a desktop's recording replayed to its player (`replay`).

The modules: `wire` (the codec), `channel` (one websocket: queue, sender, receiver),
`rights` (what each role may send), `sockets` (the two websockets and their authorisation),
`connections` (building endpoint connections), `pages` (the session pages), `files` (Files:
SFTP for the controller of an SSH session).
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Route, WebSocketRoute

from dashboard.gateway import files
from dashboard.gateway.replay import replay_socket
from dashboard.gateway.pages import session_page, start_page
from dashboard.gateway.sockets import session_socket, start_socket

routes: list[BaseRoute] = [
    Route("/connect/{endpoint_id}", start_page, methods=["GET"], name="connect"),
    Route("/sessions/{session_id}", session_page, methods=["GET"], name="session"),
    *files.routes,  # /sessions/{id}/files...: Files in the toolbar (SSH, the controller)
    WebSocketRoute("/ws/endpoints/{endpoint_id}/start", start_socket, name="ws_start"),
    WebSocketRoute("/ws/sessions/{session_id}", session_socket, name="ws_session"),
    WebSocketRoute("/ws/recordings/{session_id}", replay_socket, name="ws_recording"),  # a desktop's replay
]
