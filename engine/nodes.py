"""Which node runs a session, and whether that node is still alive.

A *node* is one gateway process (one `Engine`) writing to the database. It has a name
(`engine.node_id`, by default the host's name) that stays the same across restarts, and a new
*incarnation* each time its engine starts. Every session row records the node and incarnation
that runs it (``sessions.node_id``, ``sessions.node_incarnation``), and the node's row in
``nodes`` records its current incarnation and when it was last seen alive: the store writes
that heartbeat every ``engine.heartbeat_seconds`` (one small UPDATE, never one per frame).

When a node's engine starts, it *claims* its row (`claim`): every session that an earlier run
of this node left open (a ``kill -9``, a power cut) is no longer running, since this run has
no session yet; the store ends each of them with `gateway_restarted`, noting when it was last
seen. Sessions of other nodes are theirs to end.

A session is *live* (`live_clause`) while its row has no end and its node's current
incarnation is the one that started it, was not stopped, and was seen alive within three
heartbeats of the freshest node. Measuring from the freshest heartbeat, not from this
process's clock, lets any reader judge without a clock of its own: one node alone is always
the freshest. A session whose node died shows as not live at once, even before it is ended.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from engine.db import nodes, sessions
from engine.errors import NodeInUse

log = logging.getLogger(__name__)

LEASE_HEARTBEATS = 3  # a node not seen for this many of its heartbeats is no longer running

# Incarnations claimed by engines of this process that have not stopped: a second engine of
# this process on the same database and node name must not end the first one's sessions.
_claimed_here: set[str] = set()
_claimed_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class Node:
    """This process's node: its stable name and this run's incarnation."""

    node_id: str
    incarnation: str
    host: str
    pid: int

    @staticmethod
    def this_process(node_id: str = "") -> "Node":
        host = socket.gethostname() or "localhost"
        return Node(node_id or host, uuid.uuid4().hex, host, os.getpid())


@dataclass(frozen=True, slots=True)
class Orphan:
    """A session an earlier run of this node left open, and when it was last seen alive."""

    session_id: str
    last_seen_at: float


def claim(conn: sa.Connection, node: Node, now: float, heartbeat_seconds: float) -> list[Orphan]:
    """Make `node` the current run of its name (inside the caller's transaction) and return the
    sessions that earlier runs left open. Raises `NodeInUse` if the row's current run may still
    be alive elsewhere: then nothing is changed."""
    row = conn.execute(sa.select(nodes).where(nodes.c.node_id == node.node_id)).first()
    if row is not None:
        holder = _still_running(row, node, now)
        if holder:
            raise NodeInUse(f"node {node.node_id!r} is already running on this database ({holder}); "
                            "give each gateway its own engine.node_id")
    s = sessions.c
    # Rows written before nodes were recorded (node_id NULL) could only be this gateway's.
    open_rows = conn.execute(
        sa.select(s.id, s.started_at, s.node_incarnation)
        .where(s.ended_at.is_(None), sa.or_(s.node_id == node.node_id, s.node_id.is_(None)))
        .order_by(s.started_at, s.id)).all()
    orphans = []
    for session_id, started_at, incarnation in open_rows:
        seen = started_at
        if row is not None and incarnation == row.incarnation:
            seen = max(started_at, row.last_seen_at)  # the heartbeat vouched for it until then
        orphans.append(Orphan(session_id, float(seen)))
    values = dict(incarnation=node.incarnation, host=node.host, pid=node.pid, started_at=now,
                  last_seen_at=now, heartbeat_seconds=heartbeat_seconds, stopped_at=None)
    if row is None:
        conn.execute(nodes.insert().values(node_id=node.node_id, **values))
    else:
        conn.execute(nodes.update().where(nodes.c.node_id == node.node_id).values(**values))
    with _claimed_lock:
        _claimed_here.add(node.incarnation)
    return orphans


def failed_sessions(conn: sa.Connection, node: Node) -> list[Orphan]:
    """The open sessions of other nodes whose run is no longer running (not stopped cleanly, and
    not seen within `LEASE_HEARTBEATS` of their heartbeats: killed, or cut off from the
    database), for this node to end as `node_failed`, if it is the one that sweeps: the running
    node first by name, so that one node, not every survivor, ends and audits each of them.
    Empty for any other node."""
    n, s = nodes.c, sessions.c
    sweeper = conn.execute(sa.select(sa.func.min(n.node_id)).where(running_clause())).scalar()
    if sweeper != node.node_id:
        return []
    owner = nodes.alias("owner")
    rows = conn.execute(
        sa.select(s.id, owner.c.last_seen_at)
        .join(owner, sa.and_(owner.c.node_id == s.node_id, owner.c.incarnation == s.node_incarnation))
        .where(s.ended_at.is_(None), s.node_id != node.node_id, sa.not_(running_clause(owner)))
        .order_by(s.started_at, s.id)).all()
    return [Orphan(session_id, float(last_seen)) for session_id, last_seen in rows]


def release(node: Node) -> None:
    """This process no longer runs `node` (its store stopped)."""
    with _claimed_lock:
        _claimed_here.discard(node.incarnation)


def heartbeat(conn: sa.Connection, node: Node, now: float) -> bool:
    """Record that `node` is alive now; False if another run has taken its row since."""
    return conn.execute(nodes.update().where(nodes.c.node_id == node.node_id,
                                             nodes.c.incarnation == node.incarnation)
                        .values(last_seen_at=now)).rowcount == 1


def stopped(conn: sa.Connection, node: Node, now: float) -> None:
    """A clean stop: every session of this run has ended, and nothing will run them again."""
    conn.execute(nodes.update().where(nodes.c.node_id == node.node_id, nodes.c.incarnation == node.incarnation)
                 .values(last_seen_at=now, stopped_at=now))


def running_nodes(db: sa.Engine, now: float) -> list[str]:
    """The nodes on this database whose run may still be going, each described (its name, pid,
    host and last heartbeat): not stopped, and alive by their heartbeat (or, on this host, by
    their pid). For commands that must not run beside a gateway (`cosession keys rotate`)."""
    me = Node.this_process()
    with db.connect() as conn:
        rows = conn.execute(sa.select(nodes)).all()
    return [f"{row.node_id} ({where})" for row in rows if (where := _still_running(row, me, now))]


def _still_running(row: Any, node: Node, now: float) -> str:
    """Who may still hold the row (a short description), or "" if its run is over."""
    if row.stopped_at is not None:
        return ""
    where = f"pid {row.pid} on {row.host}, last seen {max(0.0, now - row.last_seen_at):.0f} s ago"
    with _claimed_lock:
        if row.incarnation in _claimed_here:
            return f"another engine of this process, {where}"
    fresh = now - row.last_seen_at < LEASE_HEARTBEATS * row.heartbeat_seconds
    if row.host == node.host:
        # On this host the process table is the truth: a dead pid ran its last run, whatever its
        # heartbeat says (a kill -9 a moment ago). A live pid other than ours may be a reused one:
        # then only a fresh heartbeat makes it the holder.
        if row.pid == node.pid:
            return ""
        return where if fresh and _pid_alive(row.pid) else ""
    return where if fresh else ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    except OSError:
        return False
    return True


def running_clause(n: Any = nodes) -> sa.ColumnElement[bool]:
    """SQL: the ``nodes`` row `n` (the table or an alias of it) is running: not stopped, and
    seen alive within three of its heartbeats of the freshest node (see the module's docstring)."""
    freshest = sa.select(sa.func.max(nodes.c.last_seen_at)).scalar_subquery()
    return sa.and_(n.c.stopped_at.is_(None), n.c.last_seen_at >= freshest - LEASE_HEARTBEATS * n.c.heartbeat_seconds)


def live_clause() -> sa.ColumnElement[bool]:
    """SQL: the ``sessions`` row is live (see the module's docstring). Rows without a node (older
    rows, or a store given no node) are live until they end."""
    s, n = sessions.c, nodes.alias("owner")
    running = sa.exists().where(n.c.node_id == s.node_id, n.c.incarnation == s.node_incarnation, running_clause(n))
    return sa.and_(s.ended_at.is_(None), sa.or_(s.node_id.is_(None), running))
