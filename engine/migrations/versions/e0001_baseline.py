"""The audit log and the nodes, as they were when migrations began (the baseline).

Creates what a database lacks of them: everything on a new database; on a database made before
migrations, only the missing tables, columns (``sessions.node_id``, ``node_incarnation``) and
indexes. The tables are frozen here as of this revision: later changes are later revisions.

Revision ID: e0001
Revises: (none)
"""

import sqlalchemy as sa

from engine.migrate import adopt

revision = "e0001"
down_revision = None
branch_labels = None
depends_on = None

metadata = sa.MetaData()

sessions = sa.Table(
    "sessions", metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("endpoint_id", sa.Text, nullable=False),
    sa.Column("endpoint_name", sa.Text, nullable=False),
    sa.Column("protocol", sa.Text, nullable=False),
    sa.Column("controller_id", sa.Text, nullable=False),
    sa.Column("controller_name", sa.Text, nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),  # wall-clock seconds since the epoch
    sa.Column("ended_at", sa.Float, nullable=True),  # NULL while the session is live
    sa.Column("end_reason", sa.Text, nullable=True),  # an engine.messages.EndReason value
    sa.Column("ended_by", sa.Text, nullable=True),  # user name of whoever ended it, if anyone
    sa.Column("record", sa.Boolean, nullable=False, default=False),
    # the node that runs it, and which run of that node (engine/nodes.py); NULL in rows written
    # before nodes were recorded, and by a store that was given no node
    sa.Column("node_id", sa.Text, nullable=True),
    sa.Column("node_incarnation", sa.Text, nullable=True),
    sa.Index("ix_sessions_started_at", "started_at"),
    sa.Index("ix_sessions_ended_at", "ended_at"),
    sa.Index("ix_sessions_endpoint_id", "endpoint_id"),
    sa.Index("ix_sessions_controller_id", "controller_id"),
    sa.Index("ix_sessions_controller_name", "controller_name"),
    sa.Index("ix_sessions_node_live", "node_id", "ended_at"),
)

audit_events = sa.Table(
    "audit_events", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("session_id", sa.Text, nullable=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("actor_id", sa.Text, nullable=True),
    sa.Column("actor_name", sa.Text, nullable=True),
    sa.Column("detail", sa.Text, nullable=False),  # canonical JSON object (`canonical_json`)
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Index("ix_audit_events_session_id", "session_id", "id"),
    sa.Index("ix_audit_events_kind", "kind", "id"),
    sa.Index("ix_audit_events_at", "at"),
    sa.Index("ix_audit_events_actor_id", "actor_id"),
    sa.Index("ix_audit_events_actor_name", "actor_name"),
    # SQLite: never reuse the id of a removed last row (AUTOINCREMENT)
    sqlite_autoincrement=True,
)

audit_head = sa.Table(
    "audit_head", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),  # always 1
    sa.Column("last_id", sa.Integer, nullable=True),  # NULL: no event yet
    sa.Column("last_hash", sa.String(64), nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),  # event rows in the chain
)

nodes = sa.Table(
    "nodes", metadata,
    sa.Column("node_id", sa.Text, primary_key=True),  # engine.node_id, by default the host name
    sa.Column("incarnation", sa.Text, nullable=False),  # one per start of the node's engine
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("last_seen_at", sa.Float, nullable=False),  # the heartbeat: written every heartbeat_seconds
    sa.Column("heartbeat_seconds", sa.Float, nullable=False),
    sa.Column("stopped_at", sa.Float, nullable=True),  # set by a clean stop; NULL while running or after a crash
)



def upgrade() -> None:
    adopt(metadata)


def downgrade() -> None:
    raise NotImplementedError("the baseline is not undone: drop the database instead")
