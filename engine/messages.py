"""Every message that crosses an actor boundary, in one place.

Commands are in the imperative (`Join`, `Terminate`), events and replies in the past tense
(`Joined`, `Terminated`). All are frozen, slotted dataclasses: an actor never shares mutable
state with another, it sends one of these.

`reply_to` is any callable that accepts the reply and does not block (a future's
`set_result`, a bridge that schedules onto the trio loop, a list's `append`). Actors answer
through it instead of `ask()`, so no actor thread ever waits on another.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Callable

ReplyTo = Callable[[Any], None]


class EndpointProtocol(enum.StrEnum):
    SSH = "ssh"
    VNC = "vnc"
    RDP = "rdp"
    SYNTHETIC = "synthetic"
    TELNET = "telnet"  # a real protocol that joint sessions do not support (rule 3)


class Role(enum.StrEnum):
    CONTROLLER = "controller"
    VIEWER = "viewer"


class SessionState(enum.StrEnum):
    STARTING = "starting"
    ACTIVE = "active"
    DISCONNECTED = "disconnected"
    ENDED = "ended"


class EndReason(enum.StrEnum):
    CONTROLLER_LEFT = "controller_left"
    TERMINATED = "terminated"
    EXPIRED = "expired"
    ABANDONED = "abandoned"
    ENDPOINT_FAILED = "endpoint_failed"
    ENDPOINT_CLOSED = "endpoint_closed"
    SESSION_FAILED = "session_failed"
    ENGINE_STOPPED = "engine_stopped"
    GATEWAY_RESTARTED = "gateway_restarted"  # its node stopped without ending it (kill -9); found at the next start
    RECORDING_FAILED = "recording_failed"  # it had to be recorded, and its recording failed (fail closed)
    NODE_FAILED = "node_failed"  # its node stopped beating (kill -9, cut off); ended by a surviving node


class RecordingPolicy(enum.StrEnum):
    """What a recorded session does when its recording fails (falls behind, cannot write): the
    access profile's choice. Failing closed is the default: a session that must be recorded
    does not go on unrecorded."""

    END_SESSION = "end_session"
    CONTINUE = "continue"


class Reason(enum.StrEnum):
    """Why something was refused. The value is what clients and the audit log see."""

    VIEWER_CAP = "viewer_cap"
    JOINT_SESSION_DISABLED = "joint_session_disabled"
    PROTOCOL_NOT_SHAREABLE = "protocol_not_shareable"
    NO_ACCESS = "no_access"
    SESSION_ENDED = "session_ended"
    UNKNOWN_SESSION = "unknown_session"
    NOT_CONTROLLER = "not_controller"
    NOT_ADMINISTRATOR = "not_administrator"
    NOT_PERMITTED = "not_permitted"
    NOT_A_PARTICIPANT = "not_a_participant"
    CONTROL_NOT_TRANSFERABLE = "control_not_transferable"
    NO_DEADLINE = "no_deadline"
    DEADLINE_IN_PAST = "deadline_in_past"
    ENDPOINT_UNAVAILABLE = "endpoint_unavailable"
    MALFORMED = "malformed"
    TOO_LARGE = "too_large"
    UNKNOWN_MESSAGE = "unknown_message"
    # the access model (engine/access.py, docs/access.md)
    NO_WEB_SESSION = "no_web_session"
    APPROVAL_REQUIRED = "approval_required"
    APPROVAL_PENDING = "approval_pending"
    APPROVAL_DENIED = "approval_denied"
    APPROVAL_EXPIRED = "approval_expired"
    MFA_REQUIRED = "mfa_required"
    MFA_INVALID = "mfa_invalid"
    MFA_REUSED = "mfa_reused"
    CREDENTIALS_REQUIRED = "credentials_required"
    NOT_SUPERVISOR = "not_supervisor"
    CLIPBOARD_NOT_ALLOWED = "clipboard_not_allowed"
    CLIPBOARD_DOWNLOAD_NOT_ALLOWED = "clipboard_download_not_allowed"
    FILE_TRANSFER_NOT_ALLOWED = "file_transfer_not_allowed"
    NO_STORED_PASSWORD = "no_stored_password"
    NOT_APPROVER = "not_approver"
    OWN_REQUEST = "own_request"
    ALREADY_DECIDED = "already_decided"
    BAD_WINDOW = "bad_window"
    TOO_MANY_JOINS = "too_many_joins"  # engine.max_joins_per_user within engine.joins_window_seconds
    TOO_MANY_MESSAGES = "too_many_messages"  # chat or pointer faster than engine.policy allows


# --- who and what ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class User:
    id: str
    name: str
    is_admin: bool = False


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """What the engine needs to know about an endpoint. Credentials are not here: they travel
    only inside the endpoint connection (see engine/connection.py)."""

    id: str
    name: str
    protocol: EndpointProtocol
    joint_session: bool = True
    host: str = ""
    port: int = 0


@dataclass(frozen=True, slots=True)
class Member:
    participant_id: str
    user: User
    role: Role


# --- endpoint output ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """Output of the endpoint. `emitted_ns` is `time.perf_counter_ns()` when the endpoint
    connection produced it, so fan-out latency can be measured at every receiver."""

    data: bytes
    emitted_ns: int = 0
    # send at once rather than at the end of the participant's coalescing window: set on a large
    # desktop frame (a part of a full-screen change), beside which a message's cost is nothing
    flush: bool = False


@dataclass(frozen=True, slots=True)
class Keyframe:
    """Everything a participant needs to show the screen as it is now."""

    data: bytes
    cols: int = 0
    rows: int = 0


@dataclass(frozen=True, slots=True)
class Resync:
    """Put in a participant's queue before a keyframe that replaces frames it never got."""

    dropped: int


# --- graphical endpoint output (engine.display) ----------------------------------------------
# A graphical endpoint connection decodes what its server sends (in its own worker thread; a
# JPEG is left for the display model to decode after the fan-out) into these, in order, and
# reports them as one `DisplayUpdate`; the session's display model applies them to its
# framebuffer and writes the participants' frame once. Pixel arrays are numpy
# (height, width, 4) uint8 RGBX with X = 0 (four bytes a pixel: one uint32 compare per pixel),
# made read-only by whoever builds them.


@dataclass(frozen=True, slots=True)
class DisplaySize:
    """The desktop is now `width` x `height`; `resizable`: the endpoint takes SetDesktopSize."""

    width: int
    height: int
    resizable: bool = False


@dataclass(frozen=True, slots=True)
class DisplayPixels:
    """New pixels. `jpeg` is the endpoint's own JPEG of exactly these pixels, if it sent one:
    it is passed on to the browsers as it is instead of being encoded again."""

    x: int
    y: int
    width: int
    height: int
    rgbx: Any = field(repr=False)  # numpy (height, width, 4) uint8, X = 0
    jpeg: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class DisplayJpeg:
    """New pixels as the endpoint's own JPEG, not decoded yet (only its header was checked):
    the display model passes the bytes on to the browsers at once and decodes them into its
    framebuffer after the fan-out, off the path between the endpoint and the participants."""

    x: int
    y: int
    width: int
    height: int
    jpeg: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class DisplayFill:
    x: int
    y: int
    width: int
    height: int
    colour: tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class DisplayCopy:
    """Copy the rectangle at (src_x, src_y) of the current framebuffer to (x, y)."""

    x: int
    y: int
    width: int
    height: int
    src_x: int
    src_y: int


@dataclass(frozen=True, slots=True)
class DisplayCursor:
    """The pointer's shape: `rgba` is width * height * 4 bytes (alpha 0 or 255)."""

    hot_x: int
    hot_y: int
    width: int
    height: int
    rgba: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class DisplayPointer:
    """Where the pointer is now (the controller moved it): drawn into everyone's frames."""

    x: int
    y: int


@dataclass(frozen=True, slots=True)
class DisplayName:
    name: str


@dataclass(frozen=True, slots=True)
class DisplayUpdate:
    items: tuple[Any, ...]  # DisplaySize | DisplayPixels | DisplayJpeg | DisplayFill | DisplayCopy | DisplayCursor | DisplayPointer | DisplayName
    emitted_ns: int = 0
    # Called by the EndpointActor once the update is applied and fanned out: the connection asks
    # its server for more only then, so decoded desktops never pile up in the actor's inbox.
    applied: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Resized:
    """Told to a recorder's sink by the EndpointActor, in order with the frames: the terminal
    is now `cols` x `rows` (the frames after it were written for that size)."""

    cols: int
    rows: int


# --- commands to the engine and to a session -------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartSession:
    endpoint: EndpointSpec
    controller: User
    sink: Any  # engine.sinks.Sink
    reply_to: ReplyTo
    connection: Any = None  # engine.connection.EndpointConnection; the supervisor builds one if None
    deadline: float | None = None
    cols: int = 80
    rows: int = 24
    session_id: str | None = None
    record: bool = False
    recording_policy: RecordingPolicy = RecordingPolicy.END_SESSION


@dataclass(frozen=True, slots=True)
class Join:
    user: User
    sink: Any
    reply_to: ReplyTo
    has_access: bool = True


@dataclass(frozen=True, slots=True)
class Leave:
    participant_id: str


@dataclass(frozen=True, slots=True)
class Disconnected:
    """A participant's connection dropped without a Leave (a closed tab, a lost network)."""

    participant_id: str


@dataclass(frozen=True, slots=True, repr=False)
class Input:
    """`secret`: the gateway saw a password it sent this controller (Send Password) in it:
    never recorded, whatever `recordings.record_input` says."""

    participant_id: str
    data: bytes
    secret: bool = False

    def __repr__(self) -> str:  # keystrokes may be a password: never in a log line
        return f"Input({self.participant_id!r}, <{len(self.data)} bytes>)"


@dataclass(frozen=True, slots=True)
class Resize:
    participant_id: str
    cols: int
    rows: int


@dataclass(frozen=True, slots=True)
class Say:
    """A participant's chat message to everyone in the session (checked by `policy.check_chat`
    where it arrives; the session audits it and tells everyone)."""

    participant_id: str
    text: str


@dataclass(frozen=True, slots=True)
class Point:
    """A participant points at a spot of the screen for everyone to see: `x` and `y` are
    fractions of the screen's width and height (a terminal's: the centre of a cell). Never input."""

    participant_id: str
    x: float
    y: float


@dataclass(frozen=True, slots=True)
class Terminate:
    by: User
    reply_to: ReplyTo | None = None


@dataclass(frozen=True, slots=True)
class Eject:
    participant_id: str  # the viewer to eject
    by: User
    reason: str = ""
    reply_to: ReplyTo | None = None
    by_participant: str | None = None  # the sender's own participant, when a participant sends it


@dataclass(frozen=True, slots=True)
class TransferControl:
    """Always refused (rule 6): to change controller, end the session and start a new one.
    It exists so that a client asking for it gets a reasoned refusal, and the audit shows it."""

    participant_id: str
    to_participant_id: str
    reply_to: ReplyTo | None = None


@dataclass(frozen=True, slots=True)
class Extend:
    until: float
    by: User
    reply_to: ReplyTo | None = None


@dataclass(frozen=True, slots=True)
class Expire:
    """Told by the clock at a deadline. Stale ones (the deadline moved since) are ignored."""

    deadline: float


@dataclass(frozen=True, slots=True)
class GraceElapsed:
    """Told by the clock when a disconnected controller's grace period ends."""

    generation: int


@dataclass(frozen=True, slots=True)
class SetJointSession:
    endpoint_id: str
    enabled: bool


@dataclass(frozen=True, slots=True)
class Describe:
    reply_to: ReplyTo


# --- replies --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Joined:
    session_id: str
    participant_id: str
    role: Role
    members: tuple[Member, ...]
    state: SessionState
    deadline: float | None = None
    rejoined: bool = False
    session: Any = None  # the SessionActor's ref: where this participant's Input, Leave... go
    recorded: bool = False  # the session is being recorded (every participant's page says so)


@dataclass(frozen=True, slots=True)
class Refused:
    reason: Reason
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Accepted:
    """A command was carried out (terminate, eject, extend)."""


# --- events told to every participant --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParticipantJoined:
    member: Member


@dataclass(frozen=True, slots=True)
class ParticipantLeft:
    member: Member
    reason: str  # "left", "disconnected", "ejected", "failed", "stalled"
    by: User | None = None


@dataclass(frozen=True, slots=True)
class ChatPosted:
    """Told to every participant: `member` said `text` at `at` (the engine's clock)."""

    member: Member
    text: str
    at: float


@dataclass(frozen=True, slots=True)
class Pointed:
    """Told to every participant: `member` points at (`x`, `y`), fractions of the screen."""

    member: Member
    x: float
    y: float


@dataclass(frozen=True, slots=True, repr=False)
class RemoteClipboard:
    """The endpoint's clipboard text changed (a desktop's ServerCutText). From the connection to
    its EndpointActor, to the session, which tells the controller only: a viewer never gets it,
    and the gateway gives it to the controller's page only when its profile allows clipboard
    download (docs/session.md)."""

    text: str

    def __repr__(self) -> str:  # clipboard contents stay out of logs
        return f"RemoteClipboard(<{len(self.text)} characters>)"


@dataclass(frozen=True, slots=True)
class StateChanged:
    state: SessionState
    deadline: float | None = None
    grace_until: float | None = None


@dataclass(frozen=True, slots=True)
class Ejected:
    """Told to the ejected participant only, before it is disconnected."""

    by: User
    reason: str


@dataclass(frozen=True, slots=True)
class InputRefused:
    reason: Reason


@dataclass(frozen=True, slots=True)
class SessionEnded:
    reason: EndReason
    by: User | None = None
    detail: str = ""


# --- endpoint connection → EndpointActor ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class EndpointOpened:
    detail: str = ""


@dataclass(frozen=True, slots=True)
class EndpointClosed:
    """The endpoint ended the connection normally (the shell exited)."""

    detail: str = ""


@dataclass(frozen=True, slots=True)
class EndpointError:
    """The connection failed. `retryable` is False for errors a retry cannot fix (a changed
    host key, bad credentials)."""

    detail: str
    retryable: bool = True


# --- supervision ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChildFailed:
    kind: str  # "participant", "endpoint", "session"
    child_id: str
    detail: str
    children: tuple[Any, ...] = field(default=())  # a failed session's children, to stop


# --- the audit log (told to the StoreActor) --------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditSessionStarted:
    session_id: str
    endpoint_id: str
    endpoint_name: str
    protocol: str
    controller_id: str
    controller_name: str
    started_at: float  # wall-clock seconds from the engine's clock
    record: bool = False


@dataclass(frozen=True, slots=True)
class AuditSessionEnded:
    session_id: str
    ended_at: float
    reason: str
    by: str | None = None  # user name of whoever ended it, if anyone did
    # An end found after the fact (gateway_restarted): when the session was last seen running.
    # It is the session's end time; `ended_at` is when the end was found (the event's time).
    last_seen_at: float | None = None


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One row of the hash-chained event log. `detail` holds only plain JSON values and never
    a credential."""

    kind: str  # join, leave, refused, input_refused, terminate, expire, extend, ...
    at: float
    session_id: str | None = None
    actor_id: str | None = None
    actor_name: str | None = None
    detail: tuple[tuple[str, Any], ...] = ()  # sorted key/value pairs: hashable and immutable

    @staticmethod
    def make(kind: str, at: float, session_id: str | None = None, actor: "User | None" = None,
             **detail: Any) -> "AuditEvent":
        return AuditEvent(kind, at, session_id, actor.id if actor else None,
                          actor.name if actor else None, tuple(sorted(detail.items())))


@dataclass(frozen=True, slots=True)
class Flush:
    """Answered with `Flushed` once every row told before it is committed."""

    reply_to: ReplyTo


@dataclass(frozen=True, slots=True)
class Flushed:
    rows: int  # event rows committed so far by this store


@dataclass(frozen=True, slots=True)
class ClaimNode:
    """To the store, once, when the engine starts: make this run the current one of its node
    (engine/nodes.py) and end every session an earlier run left open. Answered with
    `NodeClaimed` once those ends are written, or with the error (`engine.errors.NodeInUse`)."""

    reply_to: ReplyTo


@dataclass(frozen=True, slots=True)
class NodeClaimed:
    node_id: str
    ended: tuple[str, ...]  # the sessions ended with gateway_restarted


# --- inside the supervision tree (not for clients) ------------------------------------------


@dataclass(frozen=True, slots=True)
class Route:
    """To the supervisor: deliver `message` to a live session, or refuse with unknown_session."""

    session_id: str
    message: Any


@dataclass(frozen=True, slots=True)
class Shutdown:
    """To the supervisor: end every session (engine_stopped), then `reply_to(Accepted())`.
    To a session: end with engine_stopped."""

    reply_to: ReplyTo | None = None


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """What a dashboard shows of one live session."""

    session_id: str
    endpoint: EndpointSpec
    controller: User
    members: tuple[Member, ...]
    state: SessionState
    started_at: float
    deadline: float | None = None
    grace_until: float | None = None
    record: bool = False

    @property
    def viewers(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.role is Role.VIEWER)


@dataclass(frozen=True, slots=True)
class SessionUpdated:
    summary: SessionSummary


@dataclass(frozen=True, slots=True)
class SessionFinished:
    session_id: str
    reason: EndReason
    by: User | None = None


@dataclass(frozen=True, slots=True)
class Watch:
    """To the supervisor: call `callback(SessionUpdated | SessionFinished)` on every change of
    the live session list. The callback must not block (schedule onto the loop)."""

    callback: ReplyTo


@dataclass(frozen=True, slots=True)
class OpenEndpoint:
    cols: int
    rows: int


@dataclass(frozen=True, slots=True)
class ReconnectEndpoint:
    attempt: int


@dataclass(frozen=True, slots=True)
class EndpointReady:
    detail: str = ""


@dataclass(frozen=True, slots=True)
class EndpointRetrying:
    attempt: int
    delay: float
    detail: str


@dataclass(frozen=True, slots=True)
class EndpointFailed:
    detail: str


@dataclass(frozen=True, slots=True)
class EndpointFinished:
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Subscribe:
    """To the EndpointActor: send this participant a keyframe, then every frame, straight into
    its sink (its bounded queue), so a frame wakes one thread, not one per participant.
    `recorder`: the sink is the session's recording, not a participant: it is also told every
    size change (`Resized`), and the EndpointActor closes it after the last frame it fans out
    (at `Unsubscribe`, or when it stops)."""

    participant_id: str
    sink: Any
    recorder: bool = False


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    participant_id: str


@dataclass(frozen=True, slots=True)
class Resynchronise:
    """To the EndpointActor, from a participant's sink: it refused frames (its consumer fell a
    whole queue behind) and its consumer is ready again: render the screen as it is now, for
    this participant only. Nothing is rendered for a consumer that never comes back."""

    participant_id: str


@dataclass(frozen=True, slots=True)
class ResyncDue:
    """The EndpointActor's own timer: the resync interval has passed, render for whoever waits."""


@dataclass(frozen=True, slots=True)
class StallCheckDue:
    """The EndpointActor's own timer: look for participants behind for longer than allowed."""


@dataclass(frozen=True, slots=True)
class RecordingFailed:
    """To the session, from its recording: it fell behind (`behind`) or cannot write
    (`write_failed`, `file_deleted`, `cannot_create`); `detail` says what happened, without a
    path outside the recordings directory. The session audits it and follows its policy."""

    reason: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ParticipantStalled:
    """To the session, from its EndpointActor: this participant's sink has refused frames for
    `seconds` (at least the engine's `stall_seconds`) without its consumer coming back for them."""

    participant_id: str
    seconds: float
