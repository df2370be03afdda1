"""Settings: the embedded defaults, then a `--config` file, then COSESSION_* variables.

Every setting has a default in config/default.toml, so its type is known: a value from a file
or the environment of the wrong type, or a key that does not exist, is an error that names it.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
PRODUCT_VIEWER_CAP = 10  # rule 2: a setting may lower this, never raise it
ENV_PREFIX = "COSESSION_"
REPLAY_ROLES = ("none", "viewer", "user", "supervisor", "owner")  # recordings.replay_role


class SettingsError(ValueError):
    pass


def is_loopback(host: str) -> bool:
    """A loopback address or ``localhost``; an empty host or a wildcard (0.0.0.0, ::) is not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Server:
    host: str
    port: int
    data_dir: str
    public_url: str
    certfile: str
    keyfile: str

    @property
    def tls(self) -> bool:
        """The gateway serves TLS itself (https://, wss://)."""
        return bool(self.certfile and self.keyfile)

    @property
    def loopback(self) -> bool:
        """It listens on a loopback address only (127.0.0.0/8, ::1, localhost)."""
        return is_loopback(self.host)


@dataclass(frozen=True, slots=True)
class EngineSettings:
    max_viewers: int
    grace_seconds: float
    queue_max_bytes: int
    stall_seconds: float
    resync_interval_seconds: float
    endpoint_retries: int
    endpoint_backoff_seconds: float
    endpoint_retry_window_seconds: float
    database_url: str = field(repr=False)  # may hold the database's password: never in a log
    max_joins_per_user: int
    joins_window_seconds: float
    node_id: str
    heartbeat_seconds: float
    bus_url: str = field(repr=False)  # may hold a password or a token: never in a log (docs/cluster.md)
    bus_token: str = field(repr=False)
    bus_ca_file: str
    bus_credentials_file: str  # a path: the file's content is never read outside protocols/bus.py
    actor_workers: int


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    flush_ms: int
    flush_messages: int
    flush_bytes: int
    max_message_bytes: int
    terminal_cols: int
    terminal_rows: int


@dataclass(frozen=True, slots=True)
class Ssh:
    connect_timeout_seconds: float
    keepalive_seconds: float


@dataclass(frozen=True, slots=True)
class Vnc:
    connect_timeout_seconds: float
    quality: int
    compress: int
    demo_geometry: str

    def __post_init__(self) -> None:
        if not (0 <= self.quality <= 9 and 0 <= self.compress <= 9):
            raise SettingsError("vnc.quality and vnc.compress are 0 to 9")
        width, _, height = self.demo_geometry.partition("x")
        if not (width.isdigit() and height.isdigit() and 64 <= int(width) <= 8192 and 64 <= int(height) <= 8192):
            raise SettingsError(f"vnc.demo_geometry is {self.demo_geometry!r}: WIDTHxHEIGHT, 64 to 8192 each")

    @property
    def demo_size(self) -> tuple[int, int]:
        width, _, height = self.demo_geometry.partition("x")
        return int(width), int(height)


@dataclass(frozen=True, slots=True)
class Rdp:
    connect_timeout_seconds: float

    def __post_init__(self) -> None:
        if self.connect_timeout_seconds <= 0:
            raise SettingsError("rdp.connect_timeout_seconds must be positive")


@dataclass(frozen=True, slots=True)
class Security:
    secret_key: str
    credential_key: str

    def __repr__(self) -> str:
        return "Security(<hidden>)"


@dataclass(frozen=True, slots=True)
class Demo:
    enabled: bool


@dataclass(frozen=True, slots=True)
class Audit:
    refusal_interval_seconds: float


@dataclass(frozen=True, slots=True)
class Recordings:
    directory: str
    queue_max_bytes: int
    writer_threads: int
    fsync_seconds: float
    check_seconds: float
    record_input: bool
    keyframe_seconds: float
    keyframe_bytes: int
    retention_days: float
    replay_role: str


@dataclass(frozen=True, slots=True)
class Edge:
    max_connections: int
    max_connections_per_client: int
    max_anonymous_connections: int
    max_anonymous_connections_per_client: int
    max_anonymous_per_pass: int
    max_anonymous_wait_ms: int
    max_handshakes_in_flight: int
    max_request_body_bytes: int


@dataclass(frozen=True, slots=True)
class Log:
    format: str
    level: str
    access: bool


@dataclass(frozen=True, slots=True)
class Metrics:
    enabled: bool
    token: str

    def __repr__(self) -> str:
        return f"Metrics(enabled={self.enabled}, token=<hidden>)"


@dataclass(frozen=True, slots=True)
class Settings:
    server: Server
    engine: EngineSettings
    gateway: GatewaySettings
    ssh: Ssh
    vnc: Vnc
    rdp: Rdp
    security: Security
    demo: Demo
    audit: Audit
    recordings: Recordings
    edge: Edge
    log: Log
    metrics: Metrics

    @property
    def data_path(self) -> Path:
        return Path(self.server.data_dir).expanduser()

    @property
    def recordings_path(self) -> Path:
        return Path(self.recordings.directory).expanduser() if self.recordings.directory \
            else self.data_path / "recordings"

    @property
    def database_url(self) -> str:
        return self.engine.database_url or f"sqlite:///{self.data_path / 'cosession.db'}"


_SECTIONS = {f.name: f.type for f in fields(Settings)}


def _defaults() -> dict[str, dict[str, Any]]:
    text = resources.files("config").joinpath("default.toml").read_text()
    return tomllib.loads(text)


def _coerce(where: str, value: Any, like: Any) -> Any:
    if isinstance(like, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
    elif isinstance(like, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif isinstance(like, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif isinstance(like, str) and isinstance(value, str):
        return value
    raise SettingsError(f"{where}: expected {type(like).__name__}, got {value!r}")


def _merge(base: dict[str, dict[str, Any]], layer: Mapping[str, Any], origin: str) -> None:
    for section, values in layer.items():
        if section not in base or not isinstance(values, Mapping):
            raise SettingsError(f"{origin}: unknown section [{section}]")
        for key, value in values.items():
            if key not in base[section]:
                raise SettingsError(f"{origin}: unknown setting {section}.{key}")
            base[section][key] = _coerce(f"{origin}: {section}.{key}", value, base[section][key])


def _from_env(base: dict[str, dict[str, Any]], env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    layer: dict[str, dict[str, Any]] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX):].lower()
        section, _, key = rest.partition("_")
        if section in base and key in base[section]:
            layer.setdefault(section, {})[key] = value
    return layer


def load(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None,
         **overrides: dict[str, Any]) -> Settings:
    """Build the settings. `overrides` (section → {key: value}) win over everything; tests and
    command-line flags use them."""
    merged = _defaults()
    if path is not None:
        try:
            with open(path, "rb") as f:
                _merge(merged, tomllib.load(f), str(path))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"cannot read {path}: {exc}") from exc
    _merge(merged, _from_env(merged, os.environ if env is None else env), "environment")
    _merge(merged, overrides, "override")
    cap = merged["engine"]["max_viewers"]
    if not 0 <= cap <= PRODUCT_VIEWER_CAP:
        raise SettingsError(
            f"engine.max_viewers is {cap}: it may lower the cap of {PRODUCT_VIEWER_CAP} viewers, never raise it")
    for section, key in (("engine", "max_joins_per_user"), ("engine", "joins_window_seconds"),
                         ("engine", "heartbeat_seconds")):
        if merged[section][key] <= 0:
            raise SettingsError(f"{section}.{key} must be positive, not {merged[section][key]}")
    recordings = merged["recordings"]
    for key in ("queue_max_bytes", "writer_threads", "fsync_seconds", "check_seconds", "keyframe_seconds",
                "keyframe_bytes"):
        if recordings[key] <= 0:
            raise SettingsError(f"recordings.{key} must be positive, not {recordings[key]}")
    if recordings["retention_days"] < 0:
        raise SettingsError("recordings.retention_days must be 0 (keep) or positive")
    if recordings["replay_role"] not in REPLAY_ROLES:
        raise SettingsError(f"recordings.replay_role is one of {', '.join(REPLAY_ROLES)}, not "
                            f"{recordings['replay_role']!r}")
    if merged["audit"]["refusal_interval_seconds"] < 0:
        raise SettingsError("audit.refusal_interval_seconds must be 0 (off) or positive")
    if merged["engine"]["actor_workers"] < 1:
        raise SettingsError("engine.actor_workers must be at least 1")
    server = merged["server"]
    if bool(server["certfile"]) != bool(server["keyfile"]):
        raise SettingsError("server.certfile and server.keyfile go together: set both for TLS, or neither")
    log = merged["log"]
    log["format"], log["level"] = log["format"].lower(), log["level"].lower()
    if log["format"] not in LOG_FORMATS:
        raise SettingsError(f"log.format is {log['format']!r}: expected one of {', '.join(LOG_FORMATS)}")
    if log["level"] not in LOG_LEVELS:
        raise SettingsError(f"log.level is {log['level']!r}: expected one of {', '.join(LOG_LEVELS)}")
    if merged["metrics"]["token"] and len(merged["metrics"]["token"]) < 16:
        raise SettingsError("metrics.token is too short (at least 16 characters)")
    if merged["metrics"]["enabled"] and not merged["metrics"]["token"] and not is_loopback(server["host"]):
        raise SettingsError("metrics.enabled with the gateway listening beyond loopback needs metrics.token "
                            "(a bearer token Prometheus sends; COSESSION_METRICS_TOKEN)")
    return Settings(**{name: cls(**merged[name]) for name, cls in
                       ((n, globals()[t] if isinstance(t, str) else t) for n, t in _SECTIONS.items())})
