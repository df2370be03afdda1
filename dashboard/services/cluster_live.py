"""Every node's live sessions, for every node's live dashboard (docs/cluster.md, docs/dashboard.md).

Each node announces its live sessions (`SessionSummary`) on ``cosession.live.<node>``
(protocols/session_bus.py) whenever one changes, at most every `ANNOUNCE_MIN_SECONDS`, and every
`ANNOUNCE_SECONDS` in any case, so that a node started later learns them and a node that falls
silent (dead, or cut off) has its sessions taken off after `SILENT_SECONDS`. An announcement also
names the sessions the node ended lately and why, so that every dashboard says why a row left.
`NodeSessions` keeps what the other nodes announce and tells its watchers (the live hub,
dashboard/pages/live.py) the same `SessionUpdated` and `SessionFinished` the engine tells of its own.
"""

from __future__ import annotations

import collections
import logging
from typing import Any, Callable

import trio

from dashboard.services import Services
from engine.messages import EndReason, SessionFinished, SessionSummary, SessionUpdated
from protocols import session_bus as sb
from protocols.bus import Bus, BusError

log = logging.getLogger(__name__)

ANNOUNCE_SECONDS = 1.0  # a node's live sessions, at least this often (every node's live dashboard)
ANNOUNCE_MIN_SECONDS = 0.1  # and at most this often: changes that come together go together
SILENT_SECONDS = 5.0  # a node not heard for this long runs no session any more (for the live list)
FINISHED_KEPT_SECONDS = 5.0  # an ended session is announced with its reason for this long


class NodeSessions:
    """The other nodes' live sessions, as they announce them, and this node's announcements."""

    def __init__(self, services: Services, bus: Bus, node_id: str, publish: Callable[[str, bytes], Any]) -> None:
        self._services = services
        self._bus = bus
        self.node_id = node_id
        self._publish = publish  # the node's one ordered outbox to the bus (cluster.py)
        self._remote: dict[str, dict[str, SessionSummary]] = {}  # node → session → summary
        self._heard: dict[str, float] = {}  # node → trio time of its last announcement
        self._watchers: list[Callable[[Any], None]] = []
        self._changed = trio.Event()
        self._finished: collections.deque[tuple[float, SessionFinished]] = collections.deque(maxlen=256)

    def note(self, change: Any) -> None:
        """One of this node's sessions changed (the engine's watch, on the loop)."""
        if isinstance(change, SessionFinished):
            self._finished.append((trio.current_time(), change))
        self._changed.set()

    def ended_lately(self, session_id: str) -> bool:
        return any(finished.session_id == session_id for _, finished in self._finished)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._announce)
            nursery.start_soon(self._listen_to_nodes)

    def watch(self, callback: Callable[[Any], None]) -> None:
        """`callback(change)`, on the loop, for every change of another node's live sessions:
        `SessionUpdated` or `SessionFinished`, as the engine tells its own."""
        self._watchers.append(callback)

    def remote_sessions(self) -> list[SessionSummary]:
        return [summary for sessions in self._remote.values() for summary in sessions.values()]

    def remote_session(self, session_id: str) -> SessionSummary | None:
        for sessions in self._remote.values():
            if session_id in sessions:
                return sessions[session_id]
        return None

    def node_of(self, session_id: str) -> str:
        """The node that runs a live session: another node's name, or this node's."""
        for node, sessions in self._remote.items():
            if session_id in sessions:
                return node
        return self.node_id

    async def _announce(self) -> None:
        """This node's live sessions, whenever one changes (at most every ANNOUNCE_MIN_SECONDS)
        and every ANNOUNCE_SECONDS (a node started later learns them; a silent node has died),
        with the sessions it ended lately and why."""
        subject = sb.live_subject(self.node_id)
        while True:
            with trio.move_on_after(ANNOUNCE_SECONDS):
                await self._changed.wait()
            self._changed = trio.Event()
            now = trio.current_time()
            while self._finished and self._finished[0][0] < now - FINISHED_KEPT_SECONDS:
                self._finished.popleft()
            announcement = {"node": self.node_id, "sessions": self._services.engine.live_sessions(),
                            "finished": [finished for _, finished in self._finished]}
            self._publish(subject, sb.encode(announcement))
            await trio.sleep(ANNOUNCE_MIN_SECONDS)

    async def _listen_to_nodes(self) -> None:
        try:
            subscription = await self._bus.subscribe(sb.live_subjects())
        except BusError as exc:
            log.warning("the live list will show this node's sessions only: %s", exc)
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._forget_silent_nodes)
            async for message in subscription:
                try:
                    body = sb.decode(message.payload)
                except sb.WireError as exc:
                    log.warning("an announcement not understood: %s", exc)
                    continue
                if isinstance(body, dict) and isinstance(body.get("node"), str) and body["node"] != self.node_id:
                    self._heard[body["node"]] = trio.current_time()
                    finished = {f.session_id: f for f in body.get("finished", []) if isinstance(f, SessionFinished)}
                    sessions = {s.session_id: s for s in body.get("sessions", []) if isinstance(s, SessionSummary)}
                    self._update_node(body["node"], sessions, finished)

    async def _forget_silent_nodes(self) -> None:
        while True:
            await trio.sleep(ANNOUNCE_SECONDS)
            for node, heard in list(self._heard.items()):
                if heard < trio.current_time() - SILENT_SECONDS:
                    del self._heard[node]
                    self._update_node(node, {}, {})

    def _update_node(self, node: str, sessions: dict[str, SessionSummary],
                     finished: dict[str, SessionFinished]) -> None:
        known = self._remote.get(node, {})
        changes: list[Any] = [SessionUpdated(summary) for sid, summary in sessions.items()
                              if known.get(sid) != summary]
        changes += [finished.get(sid) or SessionFinished(sid, EndReason.NODE_FAILED)
                    for sid in known if sid not in sessions]
        if sessions:
            self._remote[node] = sessions
        else:
            self._remote.pop(node, None)
        for change in changes:
            for watcher in list(self._watchers):
                try:
                    watcher(change)
                except Exception:
                    log.exception("a watcher of the cluster's sessions failed")
