"""Every decision of engine/access.py (issue 6), as tables of cases. No database, no clock:
`NOW` is a parameter like any other."""

from dataclasses import replace

import pyotp
import pytest

from engine import access
from engine.access import (AccessFacts, Approval, ApprovalState as A, AssetRole as R, LaunchParameters,
                           Profile, QuickOutcome as Q, StartGrant, TotpAccepted, WebSession as W, may_replay)
from engine.messages import Reason, Refused

NOW = 1_800_000_000.0
HOUR = 3600.0

ALLOW = Profile("allow", W.ALLOW)
RECORD = Profile("record", W.RECORD)
DENY = Profile("deny", W.DENY)
MFA = Profile("mfa", W.ALLOW, mfa_required=True)
MFA_RECORD = Profile("mfa-record", W.RECORD, mfa_required=True)
CLIPBOARD = Profile("clipboard", W.ALLOW, clipboard_upload=True)

OPEN = Approval(A.APPROVED, NOW - HOUR, NOW + HOUR, id="open")
LATER = Approval(A.APPROVED, NOW + HOUR, NOW + 2 * HOUR, id="later")
PAST = Approval(A.APPROVED, NOW - 2 * HOUR, NOW - HOUR, id="past")
PENDING = Approval(A.PENDING, NOW, NOW + HOUR, id="pending")
STALE_PENDING = Approval(A.PENDING, NOW - 2 * HOUR, NOW - HOUR, id="stale")
DENIED = Approval(A.DENIED, NOW, NOW + HOUR, id="denied")
EXPIRED = Approval(A.EXPIRED, NOW - 2 * HOUR, NOW - HOUR, id="expired")

USER = AccessFacts(role=R.USER, profile=ALLOW)
GATED = replace(USER, requires_approval=True)


def reason(value):
    return value.reason if isinstance(value, Refused) else None


# --- roles -------------------------------------------------------------------------------------------


def test_roles_are_ordered():
    assert R.VIEWER < R.USER < R.SUPERVISOR < R.OWNER
    assert R.OWNER > R.SUPERVISOR >= R.SUPERVISOR > R.USER > R.VIEWER
    assert sorted([R.OWNER, R.VIEWER, R.SUPERVISOR, R.USER]) == [R.VIEWER, R.USER, R.SUPERVISOR, R.OWNER]
    assert R("supervisor") is R.SUPERVISOR  # the stored value


def test_roles_never_compare_as_text():
    with pytest.raises(TypeError):
        R.USER < "viewer"  # noqa: B015  ("user" < "viewer" as text)


@pytest.mark.parametrize("roles, expected", [
    ((), None),
    ((None,), None),
    ((R.VIEWER,), R.VIEWER),
    ((None, R.USER), R.USER),  # no role of their own, a group's
    ((R.VIEWER, R.SUPERVISOR), R.SUPERVISOR),  # a group raises the user's role
    ((R.OWNER, R.VIEWER), R.OWNER),  # a group never lowers it
    ((R.USER, R.USER, R.VIEWER), R.USER),
    ((R.VIEWER, R.USER, R.OWNER, R.SUPERVISOR), R.OWNER),
])
def test_effective_role(roles, expected):
    assert access.effective_role(roles) is expected


# --- profiles ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("profiles, web_session", [
    ((ALLOW,), W.ALLOW),
    ((RECORD,), W.RECORD),
    ((DENY,), W.DENY),
    ((ALLOW, RECORD), W.RECORD),  # an obligation to record adds up
    ((RECORD, ALLOW), W.RECORD),
    ((ALLOW, DENY), W.DENY),  # deny wins
    ((DENY, RECORD), W.DENY),
    ((ALLOW, RECORD, DENY), W.DENY),
    ((ALLOW, ALLOW), W.ALLOW),
])
def test_profiles_combine_web_session(profiles, web_session):
    assert access.effective_profile(profiles).web_session is web_session


def test_profiles_combine_permissions_and_obligations():
    combined = access.effective_profile([
        Profile("a", W.ALLOW, clipboard_upload=True),
        Profile("b", W.ALLOW, clipboard_download=True, mfa_required=True),
        Profile("c", W.ALLOW, file_transfer=True),
    ])
    assert (combined.clipboard_upload, combined.clipboard_download, combined.file_transfer,
            combined.mfa_required) == (True, True, True, True)
    assert combined.name == "a + b + c"
    none = access.effective_profile([Profile("a", W.ALLOW), Profile("b", W.RECORD)])
    assert (none.clipboard_upload, none.clipboard_download, none.file_transfer, none.mfa_required) == (
        False, False, False, False)


def test_profiles_combine_whatever_their_order():
    profiles = [MFA, CLIPBOARD, RECORD]
    assert access.effective_profile(profiles) == access.effective_profile(reversed(profiles))


def test_no_profile_and_one_profile():
    assert access.effective_profile([]) is None
    assert access.effective_profile([CLIPBOARD]) is CLIPBOARD


def test_gather_takes_the_effective_role_and_profile():
    facts = AccessFacts.gather([None, R.VIEWER, R.SUPERVISOR], [ALLOW, RECORD], requires_approval=True,
                               requests=[PENDING], mfa_enrolled=True)
    assert facts.role is R.SUPERVISOR
    assert facts.profile.web_session is W.RECORD
    assert facts.requests == (PENDING,)
    assert (facts.requires_approval, facts.mfa_enrolled, facts.credentials_stored) == (True, True, True)


# --- may_start -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("facts, expected", [
    # role below viewer (none), whatever the profile
    (AccessFacts(role=None, profile=ALLOW), Reason.NO_ACCESS),
    (AccessFacts(role=None, profile=RECORD), Reason.NO_ACCESS),
    (AccessFacts(role=None, profile=None), Reason.NO_ACCESS),
    # every role from viewer up starts, with a web-session profile
    (AccessFacts(role=R.VIEWER, profile=ALLOW), StartGrant(record=False, deadline=None, mfa_required=False)),
    (AccessFacts(role=R.USER, profile=ALLOW), StartGrant(False, None, False)),
    (AccessFacts(role=R.SUPERVISOR, profile=ALLOW), StartGrant(False, None, False)),
    (AccessFacts(role=R.OWNER, profile=ALLOW), StartGrant(False, None, False)),
    # each web-session setting
    (AccessFacts(role=R.OWNER, profile=DENY), Reason.NO_WEB_SESSION),
    (AccessFacts(role=R.OWNER, profile=None), Reason.NO_WEB_SESSION),
    (AccessFacts(role=R.USER, profile=RECORD), StartGrant(record=True, deadline=None, mfa_required=False)),
    (AccessFacts(role=R.USER, profile=MFA), StartGrant(record=False, deadline=None, mfa_required=True)),
    (AccessFacts(role=R.USER, profile=MFA_RECORD), StartGrant(record=True, deadline=None, mfa_required=True)),
    # approval not required: requests do not matter, and there is no deadline
    (replace(USER, requests=(DENIED,)), StartGrant(False, None, False)),
    (replace(USER, requests=(OPEN,)), StartGrant(False, None, False)),
    # approval required: absent, pending, approved, denied, expired
    (GATED, Reason.APPROVAL_REQUIRED),
    (replace(GATED, requests=(PENDING,)), Reason.APPROVAL_PENDING),
    (replace(GATED, requests=(LATER,)), Reason.APPROVAL_PENDING),  # approved, window not open yet
    (replace(GATED, requests=(OPEN,)), StartGrant(record=False, deadline=NOW + HOUR, mfa_required=False,
                                                approval_id="open")),
    (replace(GATED, requests=(DENIED,)), Reason.APPROVAL_DENIED),
    (replace(GATED, requests=(EXPIRED,)), Reason.APPROVAL_EXPIRED),
    (replace(GATED, requests=(PAST,)), Reason.APPROVAL_EXPIRED),  # approved, window closed
    (replace(GATED, requests=(STALE_PENDING,)), Reason.APPROVAL_EXPIRED),  # never decided in time
    # an open approval grants whatever came after it; the latest request explains a refusal
    (replace(GATED, requests=(OPEN, PENDING)), StartGrant(False, NOW + HOUR, False, "open")),
    (replace(GATED, requests=(OPEN, DENIED)), StartGrant(False, NOW + HOUR, False, "open")),
    (replace(GATED, requests=(EXPIRED, DENIED)), Reason.APPROVAL_DENIED),
    (replace(GATED, requests=(DENIED, EXPIRED)), Reason.APPROVAL_EXPIRED),
    (replace(GATED, requests=(PENDING, DENIED)), Reason.APPROVAL_PENDING),  # an earlier one still awaits
    # of two open approvals, the longer one sets the deadline
    (replace(GATED, requests=(replace(OPEN, window_end=NOW + 3 * HOUR, id="long"), OPEN)),
     StartGrant(False, NOW + 3 * HOUR, False, "long")),
    # the approval does not lift the profile's obligations
    (replace(GATED, profile=MFA_RECORD, requests=(OPEN,)), StartGrant(True, NOW + HOUR, True, "open")),
    # nor the role and profile requirements: they come first
    (replace(GATED, role=None, requests=(OPEN,)), Reason.NO_ACCESS),
    (replace(GATED, profile=DENY, requests=(OPEN,)), Reason.NO_WEB_SESSION),
    (replace(GATED, profile=DENY), Reason.NO_WEB_SESSION),
])
def test_may_start(facts, expected):
    decided = access.may_start(facts, NOW)
    assert (reason(decided) if isinstance(decided, Refused) else decided) == expected


@pytest.mark.parametrize("at, expected", [
    (OPEN.window_start - 0.001, Reason.APPROVAL_PENDING),  # approved, not open yet
    (OPEN.window_start, None),  # opens at its start
    (OPEN.window_end - 0.001, None),
    (OPEN.window_end, Reason.APPROVAL_EXPIRED),  # has closed at its end
])
def test_approval_window_is_half_open(at, expected):
    assert reason(access.may_start(replace(GATED, requests=(OPEN,)), at)) == expected


def test_refusals_say_why():
    assert "denies" in access.may_start(AccessFacts(role=R.USER, profile=DENY), NOW).detail
    assert "awaits" in access.may_start(replace(GATED, requests=(PENDING,)), NOW).detail
    assert "not opened" in access.may_start(replace(GATED, requests=(LATER,)), NOW).detail


# --- may_join --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("facts, expected", [
    (AccessFacts(role=None, profile=ALLOW), Reason.NO_ACCESS),
    (AccessFacts(role=None, profile=None), Reason.NO_ACCESS),
    (AccessFacts(role=R.VIEWER, profile=None), None),  # no profile of their own is needed
    (AccessFacts(role=R.VIEWER, profile=DENY), None),  # nor one that allows web sessions
    (AccessFacts(role=R.USER, profile=ALLOW), None),
    (AccessFacts(role=R.SUPERVISOR), None),
    (AccessFacts(role=R.OWNER), None),
    (replace(GATED, role=R.VIEWER), None),  # no approval of their own is needed
    (replace(GATED, role=R.VIEWER, requests=(DENIED,)), None),
    (replace(GATED, role=R.VIEWER, profile=MFA), None),  # nor an MFA token: the controller gave one
])
def test_may_join(facts, expected):
    assert reason(access.may_join(facts)) == expected


def test_a_viewer_who_may_join_may_not_start_without_their_own_approval():
    watcher = replace(GATED, role=R.VIEWER)
    assert access.may_join(watcher) is None
    assert reason(access.may_start(watcher, NOW)) is Reason.APPROVAL_REQUIRED


# --- Quick Access ------------------------------------------------------------------------------------------

LAST = LaunchParameters(terminal="vt100", cols=132, rows=43, open_in="window")


@pytest.mark.parametrize("facts, outcome, why", [
    # 1. START, when nothing below applies
    (USER, Q.START, None),
    (replace(USER, profile=RECORD), Q.START, None),
    (replace(GATED, requests=(OPEN,)), Q.START, None),
    # 2. LAUNCHER, when MFA is required (enrolled or not: the launcher leads to enrolment)
    (replace(USER, profile=MFA, mfa_enrolled=True), Q.LAUNCHER, Reason.MFA_REQUIRED),
    (replace(USER, profile=MFA), Q.LAUNCHER, Reason.MFA_REQUIRED),
    # ... and when the endpoint stores no credentials: the launcher asks for them
    (replace(USER, credentials_stored=False), Q.LAUNCHER, Reason.CREDENTIALS_REQUIRED),
    # 3. REQUEST, when approval is required and the user has none (none, denied or ended)
    (GATED, Q.REQUEST, Reason.APPROVAL_REQUIRED),
    (replace(GATED, requests=(DENIED,)), Q.REQUEST, Reason.APPROVAL_DENIED),
    (replace(GATED, requests=(EXPIRED,)), Q.REQUEST, Reason.APPROVAL_EXPIRED),
    (replace(GATED, requests=(PAST,)), Q.REQUEST, Reason.APPROVAL_EXPIRED),
    # 4. PENDING, when the user's request awaits approval (or its approved window has not opened)
    (replace(GATED, requests=(PENDING,)), Q.PENDING, Reason.APPROVAL_PENDING),
    (replace(GATED, requests=(LATER,)), Q.PENDING, Reason.APPROVAL_PENDING),
    # 5. DENIED, when the user may not start a web session
    (AccessFacts(role=None, profile=ALLOW), Q.DENIED, Reason.NO_ACCESS),
    (AccessFacts(role=R.OWNER, profile=DENY), Q.DENIED, Reason.NO_WEB_SESSION),
    (AccessFacts(role=R.OWNER, profile=None), Q.DENIED, Reason.NO_WEB_SESSION),
    # precedence: the later outcome of the issue's list wins
    (replace(GATED, profile=DENY, requests=(PENDING,)), Q.DENIED, Reason.NO_WEB_SESSION),  # 5 over 4
    (replace(GATED, role=None), Q.DENIED, Reason.NO_ACCESS),  # 5 over 3
    (replace(USER, profile=DENY, credentials_stored=False), Q.DENIED, Reason.NO_WEB_SESSION),  # 5 over 2
    (replace(GATED, profile=MFA, requests=(PENDING,)), Q.PENDING, Reason.APPROVAL_PENDING),  # 4 over 2
    (replace(GATED, requests=(DENIED, PENDING)), Q.PENDING, Reason.APPROVAL_PENDING),  # 4 over 3
    (replace(GATED, profile=MFA, mfa_enrolled=True), Q.REQUEST, Reason.APPROVAL_REQUIRED),  # 3 over 2
    (replace(GATED, profile=MFA, requests=(OPEN,)), Q.LAUNCHER, Reason.MFA_REQUIRED),  # 2 over 1
    (replace(USER, profile=MFA, credentials_stored=False), Q.LAUNCHER, Reason.MFA_REQUIRED),
])
def test_quick_access(facts, outcome, why):
    decided = access.quick_access(facts, NOW)
    assert (decided.outcome, decided.reason) == (outcome, why)
    starts = outcome in (Q.START, Q.LAUNCHER)
    assert (decided.grant is not None) is starts
    assert (decided.parameters is not None) is starts


def test_quick_access_has_exactly_the_five_outcomes_in_the_issues_order():
    assert [o.value for o in Q] == ["start", "launcher", "request", "pending", "denied"]


@pytest.mark.parametrize("last, expected", [
    (None, access.DEFAULT_PARAMETERS),
    (LAST, LAST),
])
def test_quick_access_starts_with_the_last_used_parameters_or_the_defaults(last, expected):
    decided = access.quick_access(replace(GATED, requests=(OPEN,), profile=RECORD, last_parameters=last), NOW)
    assert decided.outcome is Q.START
    assert decided.parameters == expected
    assert decided.grant == StartGrant(record=True, deadline=NOW + HOUR, mfa_required=False, approval_id="open")


def test_quick_access_prefills_the_launcher_and_names_the_pending_request():
    launcher = access.quick_access(replace(USER, profile=MFA, last_parameters=LAST), NOW)
    assert (launcher.parameters, launcher.grant.mfa_required) == (LAST, True)
    pending = access.quick_access(replace(GATED, requests=(EXPIRED, PENDING)), NOW)
    assert pending.request_id == "pending"


# --- Send Password -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("role, profile, expected", [
    (R.SUPERVISOR, CLIPBOARD, None),
    (R.OWNER, CLIPBOARD, None),
    (R.USER, CLIPBOARD, Reason.NOT_SUPERVISOR),
    (R.VIEWER, CLIPBOARD, Reason.NOT_SUPERVISOR),
    (None, CLIPBOARD, Reason.NOT_SUPERVISOR),
    (R.SUPERVISOR, ALLOW, Reason.CLIPBOARD_NOT_ALLOWED),
    (R.OWNER, Profile("download only", W.ALLOW, clipboard_download=True), Reason.CLIPBOARD_NOT_ALLOWED),
    (R.OWNER, None, Reason.CLIPBOARD_NOT_ALLOWED),
    (R.USER, ALLOW, Reason.NOT_SUPERVISOR),  # neither: the role is named first
])
def test_may_send_password(role, profile, expected):
    assert reason(access.may_send_password(role, profile)) == expected


@pytest.mark.parametrize("requires_approval, requests, expected", [
    (False, (), None),  # no unlock workflow: the role and the profile decide alone
    (True, (OPEN,), None),
    (True, (), Reason.APPROVAL_REQUIRED),
    (True, (PENDING,), Reason.APPROVAL_PENDING),
    (True, (LATER,), Reason.APPROVAL_PENDING),
    (True, (PAST,), Reason.APPROVAL_EXPIRED),
    (True, (DENIED,), Reason.APPROVAL_DENIED),
])
def test_send_passwords_unlock_workflow_is_an_open_approval(requires_approval, requests, expected):
    facts = AccessFacts(R.SUPERVISOR, CLIPBOARD, requires_approval, requests)
    assert reason(access.password_lock(facts, NOW)) == expected


@pytest.mark.parametrize("profile, upload, download", [
    (None, Reason.CLIPBOARD_NOT_ALLOWED, Reason.CLIPBOARD_DOWNLOAD_NOT_ALLOWED),
    (ALLOW, Reason.CLIPBOARD_NOT_ALLOWED, Reason.CLIPBOARD_DOWNLOAD_NOT_ALLOWED),
    (CLIPBOARD, None, Reason.CLIPBOARD_DOWNLOAD_NOT_ALLOWED),
    (Profile("download only", W.ALLOW, clipboard_download=True), Reason.CLIPBOARD_NOT_ALLOWED, None),
    (Profile("both", W.ALLOW, clipboard_upload=True, clipboard_download=True), None, None),
])
def test_each_clipboard_direction_is_its_own_flag(profile, upload, download):
    assert reason(access.may_upload_clipboard(profile)) == upload
    assert reason(access.may_download_clipboard(profile)) == download


# --- TOTP -------------------------------------------------------------------------------------------------------

SECRET = pyotp.random_base32()
STEP = access.totp_step(NOW)


def token(step, secret=SECRET):
    return pyotp.TOTP(secret).generate_otp(step)


@pytest.mark.parametrize("given, last_used, expected", [
    (token(STEP), None, STEP),  # good, first use
    (token(STEP), STEP - 1, STEP),  # good, newer than the last used
    (token(STEP - 1), None, STEP - 1),  # one step of clock drift, either way
    (token(STEP + 1), None, STEP + 1),
    (token(STEP - 2), None, Reason.MFA_INVALID),  # too old
    (token(STEP + 2), None, Reason.MFA_INVALID),  # too far ahead
    (token(STEP), STEP, Reason.MFA_REUSED),  # the same step again
    (token(STEP - 1), STEP, Reason.MFA_REUSED),  # an older step than the last used
    (token(STEP + 1), STEP, STEP + 1),
    (token(STEP, pyotp.random_base32()), None, Reason.MFA_INVALID),  # another authenticator's
    ("", None, Reason.MFA_INVALID),
    ("12345", None, Reason.MFA_INVALID),
    ("abcdef", None, Reason.MFA_INVALID),
    ("1234567", None, Reason.MFA_INVALID),
    ("١٢٣٤٥٦", None, Reason.MFA_INVALID),  # digits, but not ASCII ones
    (" " + token(STEP)[:3] + " " + token(STEP)[3:] + " ", None, STEP),  # spaces as shown by apps
])
def test_check_totp(given, last_used, expected):
    decided = access.check_totp(SECRET, given, last_used, NOW)
    assert (decided.step if isinstance(decided, TotpAccepted) else decided.reason) == expected


@pytest.mark.parametrize("secret", [None, "", "not base32!", "AAAA"])
def test_check_totp_without_a_usable_enrolment(secret):
    assert access.check_totp(secret, "123456", None, NOW).reason is Reason.MFA_REQUIRED


def test_a_token_is_accepted_once():
    first = access.check_totp(SECRET, token(STEP), None, NOW)
    assert first == TotpAccepted(STEP)
    assert access.check_totp(SECRET, token(STEP), first.step, NOW + 5).reason is Reason.MFA_REUSED
    # the next step's token is fresh
    assert access.check_totp(SECRET, token(STEP + 1), first.step, NOW + 30) == TotpAccepted(STEP + 1)


# --- the schema stores exactly these values ---------------------------------------------------------------------


def test_the_schema_allows_exactly_the_enums_values():
    from dashboard.repositories import tables as db

    assert db.ASSET_ROLES == tuple(r.value for r in R)  # lowest first, as ranked
    assert db.WEB_SESSION_SETTINGS == tuple(w.value for w in W)
    assert db.REQUEST_STATES == tuple(a.value for a in A)


@pytest.mark.parametrize("values, expected", [
    ({}, access.DEFAULT_PARAMETERS),
    ({"terminal": "vt100", "cols": "132", "rows": 43, "open_in": "window"},
     access.LaunchParameters(terminal="vt100", cols=132, rows=43, open_in="window")),
    ({"width": "1920", "height": "1080"}, access.LaunchParameters(width=1920, height=1080)),
    ({"cols": ""}, access.DEFAULT_PARAMETERS),  # an empty field keeps its default
    ({"cols": "19"}, Reason.MALFORMED),
    ({"rows": "201"}, Reason.MALFORMED),
    ({"cols": "eighty"}, Reason.MALFORMED),
    ({"width": "100000"}, Reason.MALFORMED),
    ({"terminal": "xterm; rm -rf /"}, Reason.MALFORMED),
    ({"open_in": "frame"}, Reason.MALFORMED),
])
def test_launch_parameters(values, expected):
    checked = access.check_parameters(values)
    assert (reason(checked) if isinstance(checked, Refused) else checked) == expected


@pytest.mark.parametrize("start, end, why, expected", [
    (NOW, NOW + HOUR, "maintenance", None),
    (NOW - HOUR, NOW + HOUR, "already begun", None),
    (NOW, NOW + HOUR, "  ", Reason.MALFORMED),
    (NOW, NOW + HOUR, "x" * 501, Reason.MALFORMED),
    (NOW + HOUR, NOW, "backwards", Reason.BAD_WINDOW),
    (NOW - 2 * HOUR, NOW - HOUR, "over", Reason.BAD_WINDOW),
    (NOW, NOW + 7 * 24 * HOUR + 1, "too long", Reason.BAD_WINDOW),
])
def test_check_request(start, end, why, expected):
    assert reason(access.check_request(start, end, why, NOW)) == expected


@pytest.mark.parametrize("is_approver, requester, state, end, expected", [
    (True, "alice", A.PENDING, NOW + HOUR, None),
    (False, "alice", A.PENDING, NOW + HOUR, Reason.NOT_APPROVER),
    (True, "bob", A.PENDING, NOW + HOUR, Reason.OWN_REQUEST),  # four eyes
    (True, "alice", A.APPROVED, NOW + HOUR, Reason.ALREADY_DECIDED),
    (True, "alice", A.DENIED, NOW + HOUR, Reason.ALREADY_DECIDED),
    (True, "alice", A.PENDING, NOW, Reason.ALREADY_DECIDED),  # its window is over
])
def test_may_decide(is_approver, requester, state, end, expected):
    assert reason(access.may_decide(is_approver, requester, "bob", state, end, NOW)) == expected


@pytest.mark.parametrize("approval, until, expected", [
    (OPEN, NOW + 2 * HOUR, None),
    (None, NOW + 2 * HOUR, Reason.NO_DEADLINE),
    (PAST, NOW + 2 * HOUR, Reason.NO_DEADLINE),
    (LATER, NOW + 3 * HOUR, Reason.NO_DEADLINE),  # not open yet
    (OPEN, NOW + HOUR, Reason.BAD_WINDOW),  # not after the current end
    (OPEN, NOW + 30 * 24 * HOUR, Reason.BAD_WINDOW),  # longer than a request may be
])
def test_may_request_extension(approval, until, expected):
    assert reason(access.may_request_extension(approval, until, "more time", NOW)) == expected


@pytest.mark.parametrize("replay_role, role, allowed", [
    ("owner", R.OWNER, True), ("owner", R.SUPERVISOR, False), ("owner", None, False),
    ("viewer", R.VIEWER, True), ("supervisor", R.USER, False), ("none", R.OWNER, False),
])
def test_who_may_replay_recordings(replay_role, role, allowed):
    assert (may_replay(False, role, replay_role) is None) is allowed
    assert may_replay(True, None, replay_role) is None  # administrators always
    if not allowed:
        assert may_replay(False, role, replay_role).reason.value == "not_permitted"
