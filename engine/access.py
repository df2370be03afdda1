"""Who may start and join a session on an endpoint: issue 6's access model, as pure functions.

The repositories gather what is known of one user on one endpoint into `AccessFacts` (their
roles, their access profiles, whether the endpoint requires approval, their requests for
access, whether they have enrolled an authenticator, their last launch parameters); the
functions here decide. Each answers a value: `Refused(reason)` or what was granted. Nothing
here does I/O or reads a clock: `now` is a parameter (wall-clock seconds since the epoch, as in
the database). docs/access.md describes the model and the precedence of every decision;
tests/unit/test_access.py holds their tables.
"""

from __future__ import annotations

import binascii
import enum
import hmac
from dataclasses import dataclass
from typing import Iterable

import pyotp

from engine.messages import Reason, Refused

# --- roles --------------------------------------------------------------------------------------


class AssetRole(enum.StrEnum):
    """A principal's role on one endpoint, ordered: viewer < user < supervisor < owner.

    The values are what the database stores. Roles compare by rank, never as text, and only
    with roles ("no role" is `None`, below every role, and is never compared)."""

    VIEWER = "viewer"
    USER = "user"
    SUPERVISOR = "supervisor"
    OWNER = "owner"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def _other_rank(self, other: object) -> int:
        if not isinstance(other, AssetRole):
            # not NotImplemented: Python would then compare the two as text
            raise TypeError(f"an AssetRole compares only with an AssetRole, not {type(other).__name__}")
        return other.rank

    def __lt__(self, other: object) -> bool:
        return self.rank < self._other_rank(other)

    def __le__(self, other: object) -> bool:
        return self.rank <= self._other_rank(other)

    def __gt__(self, other: object) -> bool:
        return self.rank > self._other_rank(other)

    def __ge__(self, other: object) -> bool:
        return self.rank >= self._other_rank(other)


_RANKS = {role: rank for rank, role in enumerate(AssetRole)}


def effective_role(roles: Iterable[AssetRole | None]) -> AssetRole | None:
    """The highest of a user's own role and their groups' roles on one endpoint; None when
    they have none."""
    held = [role for role in roles if role is not None]
    return max(held) if held else None


def _at_least(role: AssetRole | None, needed: AssetRole) -> bool:
    return role is not None and role >= needed


# --- access profiles ------------------------------------------------------------------------------


class WebSession(enum.StrEnum):
    DENY = "deny"
    ALLOW = "allow"
    RECORD = "record"


@dataclass(frozen=True, slots=True)
class Profile:
    """An access profile: what a session started under it may do, and what it requires."""

    name: str
    web_session: WebSession = WebSession.DENY
    clipboard_upload: bool = False
    clipboard_download: bool = False
    file_transfer: bool = False
    mfa_required: bool = False
    id: str = ""

    @property
    def allows_web_session(self) -> bool:
        return self.web_session is not WebSession.DENY


def effective_profile(profiles: Iterable[Profile]) -> Profile | None:
    """The profiles assigned to a user on one endpoint (their own and their groups'), combined
    into one; None when none is assigned.

    - web session: *deny* wins over everything (an explicit prohibition); otherwise *record*
      wins over *allow* (recording is an obligation, and obligations add up);
    - MFA required: required if any profile requires it (an obligation);
    - clipboard upload, clipboard download, file transfer: allowed if any profile allows it
      (permissions add up, as roles do).
    """
    profiles = sorted(profiles, key=lambda p: (p.name, p.id))
    if not profiles:
        return None
    if len(profiles) == 1:
        return profiles[0]
    settings = {p.web_session for p in profiles}
    web_session = (WebSession.DENY if WebSession.DENY in settings
                   else WebSession.RECORD if WebSession.RECORD in settings else WebSession.ALLOW)
    return Profile(
        name=" + ".join(p.name for p in profiles),
        web_session=web_session,
        clipboard_upload=any(p.clipboard_upload for p in profiles),
        clipboard_download=any(p.clipboard_download for p in profiles),
        file_transfer=any(p.file_transfer for p in profiles),
        mfa_required=any(p.mfa_required for p in profiles),
    )


# --- requests for access ------------------------------------------------------------------------


class ApprovalState(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Approval:
    """One request for access by the user to the endpoint, and its decision. The window is
    half-open: it opens at `window_start` and has closed at `window_end`."""

    state: ApprovalState
    window_start: float
    window_end: float
    id: str = ""

    def is_open(self, now: float) -> bool:
        """Approved, and `now` is inside its window: the user may start sessions."""
        return self.state is ApprovalState.APPROVED and self.window_start <= now < self.window_end

    def is_awaiting(self, now: float) -> bool:
        """Pending a decision, or approved for a window that has not opened yet."""
        if self.state is ApprovalState.PENDING:
            return now < self.window_end
        return self.state is ApprovalState.APPROVED and now < self.window_start


# --- what is known of one user on one endpoint --------------------------------------------------


@dataclass(frozen=True, slots=True)
class LaunchParameters:
    """The launcher's parameters: terminal type and size for SSH, screen size for VNC and RDP,
    and where the session opens."""

    terminal: str = "xterm-256color"
    cols: int = 80
    rows: int = 24
    width: int = 1280
    height: int = 800
    open_in: str = "tab"  # "tab" | "window"


DEFAULT_PARAMETERS = LaunchParameters()
TERMINAL_TYPES = ("xterm-256color", "xterm", "vt100", "linux")
OPEN_IN = ("tab", "window")
TERMINAL_LIMITS = {"cols": (20, 500), "rows": (5, 200)}
SCREEN_LIMITS = {"width": (640, 7680), "height": (480, 4320)}


def check_parameters(values: dict[str, object]) -> "Refused | LaunchParameters":
    """The launcher's parameters from a form or a JSON body (strings or numbers; what is
    missing keeps its default), or why not."""
    fields: dict[str, object] = {}
    for name, (low, high) in (TERMINAL_LIMITS | SCREEN_LIMITS).items():
        raw = values.get(name)
        if raw in (None, ""):
            continue
        try:
            number = int(str(raw).strip())
        except ValueError:
            return Refused(Reason.MALFORMED, f"{name} must be a whole number")
        if not low <= number <= high:
            return Refused(Reason.MALFORMED, f"{name} must be from {low} to {high}")
        fields[name] = number
    terminal = values.get("terminal")
    if terminal not in (None, ""):
        if terminal not in TERMINAL_TYPES:
            return Refused(Reason.MALFORMED, f"the terminal type is one of {', '.join(TERMINAL_TYPES)}")
        fields["terminal"] = terminal
    open_in = values.get("open_in")
    if open_in not in (None, ""):
        if open_in not in OPEN_IN:
            return Refused(Reason.MALFORMED, "open in a new tab or a new window")
        fields["open_in"] = open_in
    return LaunchParameters(**fields)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class AccessFacts:
    """Everything the decisions need about one user on one endpoint.

    `role` and `profile` are already effective (`effective_role`, `effective_profile`, or
    `gather`). `requests` are the user's requests for access to this endpoint, oldest first:
    the last one is the latest."""

    role: AssetRole | None = None
    profile: Profile | None = None
    requires_approval: bool = False
    requests: tuple[Approval, ...] = ()
    mfa_enrolled: bool = False
    credentials_stored: bool = True
    last_parameters: LaunchParameters | None = None

    @staticmethod
    def gather(roles: Iterable[AssetRole | None] = (), profiles: Iterable[Profile] = (), *,
               requires_approval: bool = False, requests: Iterable[Approval] = (),
               mfa_enrolled: bool = False, credentials_stored: bool = True,
               last_parameters: LaunchParameters | None = None) -> "AccessFacts":
        """Facts from the raw rows: every role and every profile assigned to the user directly
        or through a group."""
        return AccessFacts(effective_role(roles), effective_profile(profiles), requires_approval,
                           tuple(requests), mfa_enrolled, credentials_stored, last_parameters)


# --- starting and joining ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartGrant:
    """The user may start a web session. `record`: the profile forces recording. `deadline`:
    the session expires then (the end of the approval's window), None without approval.
    `mfa_required`: the launcher must accept a TOTP token (`check_totp`) before starting."""

    record: bool
    deadline: float | None
    mfa_required: bool
    approval_id: str = ""  # the approved request that sets the deadline ("" without approval)


def _check_web_session(facts: AccessFacts) -> Refused | None:
    """A role of at least viewer and a profile that allows web sessions."""
    if not _at_least(facts.role, AssetRole.VIEWER):
        return Refused(Reason.NO_ACCESS, "you have no role on this endpoint")
    if facts.profile is None:
        return Refused(Reason.NO_WEB_SESSION, "no access profile allows you web sessions on this endpoint")
    if not facts.profile.allows_web_session:
        return Refused(Reason.NO_WEB_SESSION, "your access profile denies web sessions on this endpoint")
    return None


def _open_approval(facts: AccessFacts, now: float) -> Approval | None:
    """Of the user's approvals open at `now`, the one that lasts longest."""
    open_ = [a for a in facts.requests if a.is_open(now)]
    return max(open_, key=lambda a: a.window_end) if open_ else None


def _check_approval(facts: AccessFacts, now: float) -> Refused | None:
    """When the endpoint requires approval and none is open now: why not."""
    if not facts.requires_approval or _open_approval(facts, now) is not None:
        return None
    awaiting = [a for a in facts.requests if a.is_awaiting(now)]
    if awaiting:
        latest = awaiting[-1]
        if latest.state is ApprovalState.APPROVED:
            return Refused(Reason.APPROVAL_PENDING, "your approved access window has not opened yet")
        return Refused(Reason.APPROVAL_PENDING, "your request for access awaits approval")
    if not facts.requests:
        return Refused(Reason.APPROVAL_REQUIRED, "this endpoint requires an approved request for access")
    latest = facts.requests[-1]
    if latest.state is ApprovalState.DENIED:
        return Refused(Reason.APPROVAL_DENIED, "your last request for access was denied")
    # expired by its state, approved but past its window, or pending past its window
    return Refused(Reason.APPROVAL_EXPIRED, "your access window has ended")


def may_start(facts: AccessFacts, now: float) -> Refused | StartGrant:
    """May the user start a web session on the endpoint now (as its controller)?"""
    refused = _check_web_session(facts) or _check_approval(facts, now)
    if refused is not None:
        return refused
    assert facts.profile is not None
    approval = _open_approval(facts, now) if facts.requires_approval else None
    return StartGrant(record=facts.profile.web_session is WebSession.RECORD,
                      deadline=approval.window_end if approval is not None else None,
                      mfa_required=facts.profile.mfa_required,
                      approval_id=approval.id if approval is not None else "")


def may_join(facts: AccessFacts) -> Refused | None:
    """May the user join a live session on the endpoint as a viewer? A role is enough: a viewer
    inherits the controller's approval and profile for that session only. (The session's own
    rules, cap and joint-session toggle, are engine.policy.check_join's.)"""
    if not _at_least(facts.role, AssetRole.VIEWER):
        return Refused(Reason.NO_ACCESS, "you have no role on this endpoint")
    return None


# --- Quick Access ---------------------------------------------------------------------------------


class QuickOutcome(enum.StrEnum):
    """The five outcomes of one click on an endpoint's row, in the issue's order."""

    START = "start"  # start at once with the last used (or default) parameters
    LAUNCHER = "launcher"  # show the launcher, every parameter editable
    REQUEST = "request"  # open the access request screen
    PENDING = "pending"  # open the user's pending request
    DENIED = "denied"  # show "Access denied"


@dataclass(frozen=True, slots=True)
class QuickAccess:
    outcome: QuickOutcome
    reason: Reason | None = None  # why not START; None for START
    detail: str = ""
    grant: StartGrant | None = None  # START and LAUNCHER: what the start will be
    parameters: LaunchParameters | None = None  # START: the parameters to start with; LAUNCHER: to prefill
    request_id: str = ""  # PENDING: the request to open


def quick_access(facts: AccessFacts, now: float) -> QuickAccess:
    """One click on an endpoint's row. When several outcomes apply, the later one in the
    issue's list wins: DENIED, then PENDING, then REQUEST, then LAUNCHER, then START."""
    parameters = facts.last_parameters or DEFAULT_PARAMETERS
    decided = may_start(facts, now)
    if isinstance(decided, Refused):
        if decided.reason is Reason.APPROVAL_PENDING:
            awaiting = [a for a in facts.requests if a.is_awaiting(now)]
            return QuickAccess(QuickOutcome.PENDING, decided.reason, decided.detail, request_id=awaiting[-1].id)
        if decided.reason in (Reason.APPROVAL_REQUIRED, Reason.APPROVAL_DENIED, Reason.APPROVAL_EXPIRED):
            return QuickAccess(QuickOutcome.REQUEST, decided.reason, decided.detail)
        return QuickAccess(QuickOutcome.DENIED, decided.reason, decided.detail)
    if decided.mfa_required:
        detail = ("enter a token from your authenticator" if facts.mfa_enrolled
                  else "enrol an authenticator, then enter a token from it")
        return QuickAccess(QuickOutcome.LAUNCHER, Reason.MFA_REQUIRED, detail, decided, parameters)
    if not facts.credentials_stored:
        return QuickAccess(QuickOutcome.LAUNCHER, Reason.CREDENTIALS_REQUIRED,
                           "this endpoint stores no credentials: enter yours", decided, parameters)
    return QuickAccess(QuickOutcome.START, grant=decided, parameters=parameters)


# --- requests, approvals and extensions ---------------------------------------------------------

MAX_REQUEST_SECONDS = 7 * 24 * 3600  # the longest window a request may ask for
MAX_REASON_CHARS = 500


def check_request(window_start: float, window_end: float, reason: str, now: float) -> Refused | None:
    """Is this a request for access one can file? A window that ends after it starts, has not
    ended yet, lasts at most a week; a reason of 1 to 500 characters."""
    if not reason.strip():
        return Refused(Reason.MALFORMED, "say why you need access")
    if len(reason) > MAX_REASON_CHARS:
        return Refused(Reason.MALFORMED, f"the reason is at most {MAX_REASON_CHARS} characters")
    if not window_end > window_start:
        return Refused(Reason.BAD_WINDOW, "the window must end after it starts")
    if window_end <= now:
        return Refused(Reason.BAD_WINDOW, "the window has already ended")
    if window_end - max(window_start, now) > MAX_REQUEST_SECONDS:
        return Refused(Reason.BAD_WINDOW, "a window lasts at most 7 days")
    return None


def may_decide(is_approver: bool, requester_id: str, approver_id: str, state: ApprovalState,
               window_end: float, now: float) -> Refused | None:
    """May this user approve or deny this request (or extension) now? Only an approver of the
    endpoint; never their own request (four eyes); only while it is pending and its window (or
    the extension's new end) has not passed."""
    if not is_approver:
        return Refused(Reason.NOT_APPROVER, "you are not an approver for this endpoint")
    if requester_id == approver_id:
        return Refused(Reason.OWN_REQUEST, "nobody approves their own request")
    if state is not ApprovalState.PENDING or window_end <= now:
        return Refused(Reason.ALREADY_DECIDED, "this request is no longer pending")
    return None


def may_request_extension(approval: Approval | None, until: float, reason: str, now: float) -> Refused | None:
    """May the controller ask to move the end of the approval their session runs under to
    `until`? The approval must be open now, and `until` after its current end."""
    if approval is None or not approval.is_open(now):
        return Refused(Reason.NO_DEADLINE, "this session runs under no open approval")
    if until <= approval.window_end:
        return Refused(Reason.BAD_WINDOW, "an extension must end after the current window")
    return check_request(approval.window_start, until, reason, now)


# --- Send Password ----------------------------------------------------------------------------------


def may_send_password(role: AssetRole | None, profile: Profile | None) -> Refused | None:
    """May the controller have the endpoint's stored password put on their clipboard? Needs at
    least supervisor and a profile that allows clipboard upload."""
    if not _at_least(role, AssetRole.SUPERVISOR):
        return Refused(Reason.NOT_SUPERVISOR, "Send Password needs at least the supervisor role")
    return may_upload_clipboard(profile)


def password_lock(facts: AccessFacts, now: float) -> Refused | None:
    """Send Password's unlock workflow: on an endpoint that requires approval, the stored
    password is unlocked by an open approved request of the controller, as a start is (the
    session's own approval, or a newer one). Otherwise why not: approval_required,
    approval_pending, approval_denied or approval_expired (docs/access.md, *Send Password*)."""
    return _check_approval(facts, now)


def may_upload_clipboard(profile: Profile | None) -> Refused | None:
    """May the controller's clipboard go to the endpoint (a terminal's paste, a graphical
    session's ClientCutText)? Needs a profile that allows clipboard upload."""
    if profile is None or not profile.clipboard_upload:
        return Refused(Reason.CLIPBOARD_NOT_ALLOWED, "your access profile does not allow clipboard upload")
    return None


def may_download_clipboard(profile: Profile | None) -> Refused | None:
    """May the controller's page have the endpoint's clipboard text (a desktop's cut text)?
    Needs a profile that allows clipboard download."""
    if profile is None or not profile.clipboard_download:
        return Refused(Reason.CLIPBOARD_DOWNLOAD_NOT_ALLOWED, "your access profile does not allow clipboard download")
    return None


# --- MFA (TOTP) ------------------------------------------------------------------------------------

TOTP_DRIFT_STEPS = 1  # a token of the previous or the next 30-second step is accepted too


@dataclass(frozen=True, slots=True)
class TotpAccepted:
    """The token is valid. Store `step` as the user's last used step: a token of that step or
    an older one is refused from now on."""

    step: int


def totp_step(now: float, interval: int = 30) -> int:
    return int(now // interval)


def check_totp(secret: str | None, token: str, last_used_step: int | None, now: float) -> Refused | TotpAccepted:
    """Is `token` valid for the enrolled TOTP `secret` at `now`, and not a replay? A token is
    valid for its 30-second step, with one step of clock drift either way; it is reused when
    its step is the last used step or older (RFC 6238, section 5.2)."""
    if not secret:
        return Refused(Reason.MFA_REQUIRED, "enrol an authenticator first")
    try:
        totp = pyotp.TOTP(secret)
    except (ValueError, binascii.Error):
        return Refused(Reason.MFA_REQUIRED, "your authenticator's enrolment is unusable: enrol again")
    token = "".join(token.split())
    if len(token) != totp.digits or not token.isascii() or not token.isdigit():
        return Refused(Reason.MFA_INVALID, f"a token is {totp.digits} digits")
    current = totp_step(now, totp.interval)
    matched = [step for step in range(current + TOTP_DRIFT_STEPS, current - TOTP_DRIFT_STEPS - 1, -1)
               if step >= 0 and hmac.compare_digest(totp.generate_otp(step), token)]
    if not matched:
        return Refused(Reason.MFA_INVALID, "wrong token")
    fresh = [step for step in matched if last_used_step is None or step > last_used_step]
    if not fresh:
        return Refused(Reason.MFA_REUSED, "this token was already used: wait for the next one")
    return TotpAccepted(fresh[0])


# --- replaying recordings ------------------------------------------------------------------------


def may_replay(is_admin: bool, role: AssetRole | None, replay_role: str) -> Refused | None:
    """May this user replay the recordings of an endpoint (docs/recordings.md)? Administrators
    always; anyone else with at least `replay_role` on the endpoint (`recordings.replay_role`;
    "none": administrators only)."""
    if is_admin or (replay_role != "none" and _at_least(role, AssetRole(replay_role))):
        return None
    who = "administrators" if replay_role == "none" else f"administrators and the endpoint's {replay_role}s and above"
    return Refused(Reason.NOT_PERMITTED, f"only {who} may replay its recordings")


def may_transfer_files(profile: Profile | None) -> Refused | None:
    """May the controller move files to and from the endpoint (Files in the toolbar)? Needs a
    profile that allows file transfer; decided at each use."""
    if profile is None or not profile.file_transfer:
        return Refused(Reason.FILE_TRANSFER_NOT_ALLOWED, "your access profile does not allow file transfer")
    return None
