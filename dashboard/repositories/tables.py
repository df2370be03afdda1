"""The dashboard's tables: users, endpoints and the access model, in SQLAlchemy Core, on their
own `MetaData`, in the same database as the engine's audit log (engine/db.py).

The same definitions run on SQLite and on PostgreSQL: queries use Core constructs only, never
SQLite-only SQL. `create(db)` brings them to the newest revision of dashboard/migrations (a
schema change here is a new revision there too).
"""

from __future__ import annotations

import sqlalchemy as sa

from engine import upgrade_schema

metadata = sa.MetaData()

MIGRATIONS = "dashboard.migrations"
VERSION_TABLE = "dashboard_schema_version"


def create(db: sa.Engine) -> None:
    """Migrate the dashboard's tables to the newest revision (the engine's own are `make_engine`'s)."""
    upgrade_schema(db, MIGRATIONS, VERSION_TABLE)


# --- users, endpoints and who may use which (repositories/accounts.py, repositories/endpoints.py) --------

users = sa.Table(
    "users", metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("password_hash", sa.Text, nullable=False),  # argon2id (argon2-cffi)
    sa.Column("is_admin", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.Float, nullable=False),  # wall-clock seconds since the epoch
)

endpoints = sa.Table(
    "endpoints", metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
    sa.Column("protocol", sa.String(16), nullable=False),  # an engine.messages.EndpointProtocol value
    sa.Column("host", sa.String(255), nullable=False, default=""),
    sa.Column("port", sa.Integer, nullable=False, default=0),
    sa.Column("username", sa.String(255), nullable=False, default=""),
    sa.Column("secret", sa.LargeBinary, nullable=True),  # AES-GCM blob (security/secrets.py); key not here
    sa.Column("secret_kind", sa.String(16), nullable=True),  # 'password' | 'private_key' | NULL
    sa.Column("joint_session", sa.Boolean, nullable=False, default=True),
    sa.Column("host_key", sa.Text, nullable=True),  # trusted SSH host key, OpenSSH 'TYPE BASE64'
    sa.Column("pending_host_key", sa.Text, nullable=True),  # a changed key awaiting an administrator
    sa.Column("created_at", sa.Float, nullable=False),
)

# Before the access model, one row here meant "may use this endpoint". Nothing writes it now:
# repositories/grants.py moves its rows into the model at start (role `user` and the Standard
# profile) and empties it. Kept so that an older database can be read once.
endpoint_access = sa.Table(
    "endpoint_access", metadata,
    sa.Column("endpoint_id", sa.String(36), sa.ForeignKey("endpoints.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    sa.Index("ix_endpoint_access_user_id", "user_id"),
)

# --- the access model (issue 6; decisions in engine/access.py, docs/access.md) -----------------
# The repositories are grants.py, profiles.py, groups.py, approvers.py, approvals.py, mfa.py
# and launch_parameters.py. A principal is a user or a group: its id names a
# row of `users` or of `groups` by `principal_kind`, so it has no foreign key; whoever deletes a
# user or a group removes its rows here in the same transaction.

PRINCIPAL_KINDS = ("user", "group")
ASSET_ROLES = ("viewer", "user", "supervisor", "owner")  # engine.access.AssetRole, lowest first
WEB_SESSION_SETTINGS = ("deny", "allow", "record")  # engine.access.WebSession
REQUEST_STATES = ("pending", "approved", "denied", "expired")  # engine.access.ApprovalState


def _one_of(column: str, values: tuple[str, ...], name: str) -> sa.CheckConstraint:
    return sa.CheckConstraint(sa.column(column).in_(values), name=name)


groups = sa.Table(
    "groups", metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
    sa.Column("created_at", sa.Float, nullable=False),
)

group_members = sa.Table(
    "group_members", metadata,
    sa.Column("group_id", sa.String(36), sa.ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    sa.Index("ix_group_members_user_id", "user_id"),
)

asset_roles = sa.Table(
    "asset_roles", metadata,
    sa.Column("endpoint_id", sa.String(36), sa.ForeignKey("endpoints.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("principal_kind", sa.String(8), primary_key=True),  # 'user' | 'group'
    sa.Column("principal_id", sa.String(36), primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),  # 'viewer' | 'user' | 'supervisor' | 'owner'
    _one_of("principal_kind", PRINCIPAL_KINDS, "ck_asset_roles_principal_kind"),
    _one_of("role", ASSET_ROLES, "ck_asset_roles_role"),
    sa.Index("ix_asset_roles_principal", "principal_kind", "principal_id"),
)

access_profiles = sa.Table(
    "access_profiles", metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
    sa.Column("web_session", sa.String(8), nullable=False, default="deny"),  # 'deny' | 'allow' | 'record'
    sa.Column("clipboard_upload", sa.Boolean, nullable=False, default=False),
    sa.Column("clipboard_download", sa.Boolean, nullable=False, default=False),
    sa.Column("file_transfer", sa.Boolean, nullable=False, default=False),
    sa.Column("mfa_required", sa.Boolean, nullable=False, default=False),
    _one_of("web_session", WEB_SESSION_SETTINGS, "ck_access_profiles_web_session"),
)

profile_assignments = sa.Table(
    "profile_assignments", metadata,
    sa.Column("endpoint_id", sa.String(36), sa.ForeignKey("endpoints.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("principal_kind", sa.String(8), primary_key=True),  # 'user' | 'group'
    sa.Column("principal_id", sa.String(36), primary_key=True),
    sa.Column("profile_id", sa.String(36), sa.ForeignKey("access_profiles.id", ondelete="CASCADE"),
              primary_key=True),
    _one_of("principal_kind", PRINCIPAL_KINDS, "ck_profile_assignments_principal_kind"),
    sa.Index("ix_profile_assignments_principal", "principal_kind", "principal_id"),
    sa.Index("ix_profile_assignments_profile_id", "profile_id"),
)

approval_policies = sa.Table(
    "approval_policies", metadata,
    sa.Column("endpoint_id", sa.String(36), sa.ForeignKey("endpoints.id", ondelete="CASCADE"),
              primary_key=True),  # no row: no approval required
    sa.Column("requires_approval", sa.Boolean, nullable=False, default=False),
)

access_requests = sa.Table(
    "access_requests", metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("endpoint_id", sa.String(36), sa.ForeignKey("endpoints.id", ondelete="CASCADE"), nullable=False),
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.Column("window_start", sa.Float, nullable=False),  # wall-clock seconds since the epoch
    sa.Column("window_end", sa.Float, nullable=False),
    sa.Column("state", sa.String(16), nullable=False, default="pending"),
    sa.Column("approver_id", sa.String(36), sa.ForeignKey("users.id", ondelete="SET NULL"), nullable=True),
    sa.Column("decided_at", sa.Float, nullable=True),  # NULL while pending
    sa.Column("requested_at", sa.Float, nullable=False),  # orders a user's requests: the latest decides
    _one_of("state", REQUEST_STATES, "ck_access_requests_state"),
    sa.CheckConstraint("window_end > window_start", name="ck_access_requests_window"),
    sa.Index("ix_access_requests_user_endpoint", "user_id", "endpoint_id", "requested_at"),
    sa.Index("ix_access_requests_endpoint_state", "endpoint_id", "state"),
)

endpoint_approvers = sa.Table(
    "endpoint_approvers", metadata,  # the approver right: who decides requests for an endpoint
    sa.Column("endpoint_id", sa.String(36), sa.ForeignKey("endpoints.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("principal_kind", sa.String(8), primary_key=True),  # 'user' | 'group'
    sa.Column("principal_id", sa.String(36), primary_key=True),
    _one_of("principal_kind", PRINCIPAL_KINDS, "ck_endpoint_approvers_principal_kind"),
    sa.Index("ix_endpoint_approvers_principal", "principal_kind", "principal_id"),
)

access_extensions = sa.Table(
    "access_extensions", metadata,  # a controller asks to move an approval's end (and its sessions')
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("request_id", sa.String(36), sa.ForeignKey("access_requests.id", ondelete="CASCADE"),
              nullable=False),  # the approved request whose window it extends
    sa.Column("session_id", sa.Text, nullable=True),  # the session it was asked from
    sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("until", sa.Float, nullable=False),  # the window's new end
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.Column("state", sa.String(16), nullable=False, default="pending"),
    sa.Column("approver_id", sa.String(36), sa.ForeignKey("users.id", ondelete="SET NULL"), nullable=True),
    sa.Column("decided_at", sa.Float, nullable=True),
    sa.Column("requested_at", sa.Float, nullable=False),
    _one_of("state", REQUEST_STATES, "ck_access_extensions_state"),
    sa.Index("ix_access_extensions_request_id", "request_id"),
)

mfa_secrets = sa.Table(
    "mfa_secrets", metadata,  # one TOTP authenticator per user
    sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("secret", sa.LargeBinary, nullable=False),  # AES-GCM blob bound to the user id
    sa.Column("confirmed", sa.Boolean, nullable=False, default=False),  # a first token was accepted
    sa.Column("last_used_step", sa.Integer, nullable=True),  # RFC 6238 5.2: a step is used once
    sa.Column("created_at", sa.Float, nullable=False),
)

launch_parameters = sa.Table(
    "launch_parameters", metadata,  # a user's most recently used launcher parameters per endpoint
    sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("endpoint_id", sa.String(36), sa.ForeignKey("endpoints.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("parameters", sa.Text, nullable=False),  # JSON of engine.access.LaunchParameters
    sa.Column("used_at", sa.Float, nullable=False),
)



# --- the tool library (repositories/tools.py): files an administrator keeps for Send Tool ----------

tools = sa.Table(
    "tools", metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),  # what the toolbar lists
    sa.Column("file_name", sa.String(128), nullable=False),  # what it is called in the home folder
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),  # hex, of `content`
    sa.Column("content", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("created_by", sa.String(64), nullable=False),  # the administrator's name
)
