"""Requests for access and their approvals across nodes (docs/cluster.md, "Approvals").

Only the node that runs a session knows the approval it runs under (its start's, kept in that
node's directory of live sessions, dashboard/services/live_sessions.py). So:

- **An approved extension** (`extend`): the deciding node asks the owning node of each other
  session of the requester on that endpoint (``extend`` on the session's control subject,
  protocols/session_bus.py), which moves the deadline if the session runs under that approval,
  to the approval's end as the database says (`extend_here`): the message only says where to
  look, and no node moves a deadline further than the approval.
- **The approval of a session run elsewhere** (`approval_of`), for the controller's page and
  its request for an extension on any node: asked of the owning node (`approval_here`).
- **A request filed, decided or withdrawn** (`changed`): announced on ``cosession.access``;
  every other node tells the requester's controller pages it serves what Send Password offers
  now, read from the database there (`follow`).
- **Who a message names** (`known_user`): a joiner or who terminates, as the owning node's
  database knows them, not as the message says.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from engine.messages import Accepted, Reason, Refused, User
from protocols import session_bus as sb
from protocols.bus import BusError

log = logging.getLogger(__name__)


async def known_user(services: Any, claimed: Any) -> User | None:
    """The user a message from another node names (a joiner, who terminates), as this node's
    database knows it now: never the message's own name or administrator flag. None for no
    user, or one the database does not know (deleted since)."""
    if not isinstance(claimed, User):
        return None
    return await trio.to_thread.run_sync(services.users.get, claimed.id)


class AccessAcrossNodes:
    """A node's side of approvals between nodes (``services.cluster.access``). `link` is the
    node's ClusterLink (dashboard/services/cluster.py): its bus, its outbox, every node's live
    sessions and this node's directory."""

    def __init__(self, link: Any) -> None:
        self._link = link

    # --- the owning node -----------------------------------------------------------------------

    def _served_here(self, session_id: str) -> Any:
        directory = self._link.directory
        live = directory.sessions.get(session_id) if directory is not None else None
        return live if live is not None and live.node is None else None

    async def extend_here(self, session_id: str, request_id: str) -> Accepted | Refused:
        """Another node approved an extension of approval `request_id`: if this session runs
        under it, its deadline moves to the approval's end, as the database says."""
        live = self._served_here(session_id)
        if live is None or not request_id or live.approval_id != request_id:
            return Refused(Reason.NO_DEADLINE, "this session does not run under that approval")
        approval = await trio.to_thread.run_sync(self._link.services.approvals.request, request_id)
        if approval is None:
            return Refused(Reason.NO_DEADLINE, "the approval this session runs under no longer exists")
        moved = await self._link.directory.extend_here(request_id, approval.window_end, session_id)
        return Accepted() if moved else Refused(Reason.NO_DEADLINE, "the session's deadline did not move")

    def approval_here(self, session_id: str) -> dict[str, Any]:
        live = self._served_here(session_id)
        return {"approval_id": live.approval_id if live is not None else None}

    async def answer(self, op: str, session_id: str, body: dict[str, Any]) -> Any:
        """The owning node's answer to ``extend`` or ``approval`` on the session's control subject."""
        if op == "extend":
            return await self.extend_here(session_id, str(body.get("request_id", "")))
        return self.approval_here(session_id)

    # --- the deciding node, the asking node ----------------------------------------------------

    async def _ask(self, session_id: str, body: dict[str, Any]) -> Any:
        """The owning node's answer to a request on the session's control subject (None: none)."""
        try:
            return await self._link.ask(session_id, body)
        except (BusError, sb.WireError) as exc:
            log.info("session %s: no answer from its node to %s (%s)", session_id, body.get("op"), exc)
            return None

    async def extend(self, request_id: str, controller_id: str, endpoint_id: str) -> list[str]:
        """An approved extension of approval `request_id` (of `controller_id` on `endpoint_id`):
        the sessions of other nodes whose deadline moved."""
        candidates = [summary.session_id for summary in self._link.sessions.remote_sessions()
                      if summary.controller.id == controller_id and summary.endpoint.id == endpoint_id
                      and sb.safe_id(summary.session_id)]
        moved: list[str] = []

        async def ask(session_id: str) -> None:
            answer = await self._ask(session_id, {"op": "extend", "request_id": request_id})
            if isinstance(answer, Accepted):
                moved.append(session_id)
            else:
                log.info("session %s not extended: %s", session_id, getattr(answer, "detail", "no answer"))

        async with trio.open_nursery() as nursery:
            for session_id in candidates:
                nursery.start_soon(ask, session_id)
        return sorted(moved)

    async def approval_of(self, session_id: str) -> str | None:
        """The approval a session run by another node runs under (None: none, or no answer)."""
        if not sb.safe_id(session_id):
            return None
        answer = await self._ask(session_id, {"op": "approval"})
        approval_id = answer.get("approval_id") if isinstance(answer, dict) else None
        return approval_id if isinstance(approval_id, str) else None

    def changed(self, user: User, endpoint_id: str) -> None:
        """`user`'s requests for access to `endpoint_id` changed on this node: tell the others."""
        link = self._link
        link.publisher.put(sb.ACCESS_SUBJECT, sb.encode({"node": link.node_id, "user": user,
                                                         "endpoint_id": endpoint_id}))

    async def follow(self) -> None:
        """Another node's `changed`: the offer is read from the database here, for the
        requester's controller pages this node serves."""
        link = self._link
        try:
            subscription = await link.bus.subscribe(sb.ACCESS_SUBJECT)
        except BusError as exc:
            log.warning("requests for access decided on other nodes will not reach the pages here: %s", exc)
            return
        async for message in subscription:
            try:
                body = sb.decode(message.payload)
            except sb.WireError as exc:
                log.warning("a change of access not understood: %s", exc)
                continue
            if not isinstance(body, dict) or body.get("node") == link.node_id or link.directory is None:
                continue
            user, endpoint_id = body.get("user"), body.get("endpoint_id")
            if isinstance(user, User) and isinstance(endpoint_id, str):
                link.spawn(link.directory.password_changed_here, user, endpoint_id)
