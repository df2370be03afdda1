"""Send Password (issue 6) against the real gateway and a real OpenSSH server.

- The table: the controller's role (viewer, user, supervisor, owner) × its profile's clipboard
  upload. Only supervisor or owner with upload gets the endpoint's stored password, on its own
  websocket, and each use is one `decrypt_field` audit row that names the endpoint and the field,
  never the password; everyone else gets the refusal that says why. An endpoint that stores a
  key, or nothing, has no password to send.
- A viewer (the lowest role, and an administrator who owns the endpoint) sends every client
  message of docs/protocol.md, their malformed, unknown and oversized variants and extra fields
  naming the password, while the controller uses Send Password: nothing the viewer receives
  holds the password, and its send_password is refused `not_controller` and audited.
- The scan: a whole story in Chromium (an administrator creates the endpoint with the password
  through the API and gives access through the admin pages, the controller launches through
  the launcher, types, uses Send Password from the bar and from the toolbar, a viewer joins by
  the share link, the session ends), then every log record, every log file and file of the data
  directory, every page fetched, every websocket frame, every row of every table of the database
  and the audit exports are searched for the password, its UTF-8 bytes, hex and base64 forms: it
  is found only in the two `password` messages the controller's Send Password got (and,
  encrypted, in the endpoint's row).

The test user's password of the `openssh` fixture (random, fixed per machine) is the secret
searched for: it is what the endpoint stores and what logs the session in.
"""

from __future__ import annotations

import base64
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import pytest
import sqlalchemy as sa
from playwright.sync_api import Browser, BrowserContext, Page, expect

from dashboard.gateway import wire
from engine.messages import EndpointProtocol
from tests.fixtures.gateway import PASSWORD
from tests.fixtures.websockets import Client, Harness

pytestmark = pytest.mark.openssh

DEADLINE = 10  # seconds: a bound on waiting for the gateway, never a wait for time to pass
WAIT = 15_000  # ms, the same for the browser


# --- finding the secret -------------------------------------------------------------------------


def needles(secret: str) -> list[bytes]:
    """The secret as it could appear anywhere: its UTF-8 bytes, hex, and base64 (standard and
    URL-safe) at each of the three alignments, so that base64 of any data that contains it
    (a JSON object, a blob) is found too."""
    raw = secret.encode()
    found = {raw, raw.hex().encode(), raw.hex().upper().encode()}
    for offset in range(3):
        encoded = base64.b64encode(bytes(offset) + raw).rstrip(b"=")
        # drop the characters that mix in the prefix or the padding
        inner = encoded[(4 * offset + 2) // 3:len(encoded) - (1 if (offset + len(raw)) % 3 else 0)]
        found.add(inner)
        found.add(inner.translate(bytes.maketrans(b"+/", b"-_")))
    return sorted(found, key=len)


class Haystack:
    """Everything the tests searched, and where the secret was found."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.needles = needles(secret)
        self.searched: Counter[str] = Counter()
        self.found: list[str] = []

    def scan(self, where: str, data: str | bytes | bytearray | None) -> None:
        if data is None:
            return
        blob = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
        self.searched[where.split()[0]] += 1  # by kind: page, frame, log, data, database, ...
        for needle in self.needles:
            index = blob.find(needle)
            if index >= 0:
                context = blob[max(0, index - 60):index + len(needle) + 60].replace(needle, b"<SECRET>")
                self.found.append(f"{where}: {context!r}")

    def assert_clean(self) -> None:
        assert not self.found, "the password was found:\n" + "\n".join(self.found)


def contains_secret(data: str | bytes | bytearray, secret: str) -> bool:
    blob = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    return any(needle in blob for needle in needles(secret))


def profile(h: Harness, upload: bool) -> Any:
    repos = h.gateway.services
    name = "Upload" if upload else "No upload"
    return repos.profiles.profile(name) or repos.profiles.create_profile(name, "allow", clipboard_upload=upload)


def person(h: Harness, name: str, endpoint: Any, role: str, upload: bool, *, admin: bool = False) -> Any:
    """A user with `role` and a profile that allows web sessions (and clipboard upload or not)."""
    user = h.gateway.create_user(name, PASSWORD, admin=admin)
    h.gateway.services.grants.grant(endpoint.id, user.id, role, profile(h, upload).id)
    return user


def vault(h: Harness, openssh: Any, stores: str = "password", name: str = "vault") -> Any:
    """An SSH endpoint on the real sshd storing the test user's password (or key, or nothing)."""
    secret = {"password": {"password": openssh.password}, "key": {"private_key": openssh.private_key},
              "nothing": {}}[stores]
    return h.gateway.create_endpoint(name, EndpointProtocol.SSH, openssh.host, openssh.port, username=openssh.username,
                                     host_key=openssh.host_key, **secret)


async def start(h: Harness, name: str, endpoint: Any, credentials: dict[str, Any] | None = None
                ) -> tuple[Client, dict[str, Any]]:
    """Start a session on the real endpoint and wait until its shell answers."""
    client = await h.open(name, f"/ws/endpoints/{endpoint.id}/start")
    message: dict[str, Any] = {"type": "start", "cols": 100, "rows": 30}
    if credentials is not None:
        message["credentials"] = credentials
    await client.send(message)
    joined = await client.control("joined", deadline=DEADLINE)
    await client.control("state", deadline=DEADLINE, state="active")
    await client.send(b"echo up-$((40+2))\r")
    await client.output_contains(b"up-42", deadline=DEADLINE)
    return client, joined


def is_password_answer(message: dict[str, Any]) -> bool:
    return message["type"] == "password" or (message["type"] == "refused" and message.get("of") == "send_password")


async def send_password(client: Client) -> dict[str, Any]:
    await client.send({"type": "send_password"})
    return await client.answer(is_password_answer)


def without_the_answer(raw: Iterable[str | bytes]) -> list[str | bytes]:
    """The frames a controller received, less the `password` messages Send Password answered."""
    return [m for m in raw if not (isinstance(m, str) and json.loads(m).get("type") == "password")]


# --- 1. the table --------------------------------------------------------------------------------

ROLES = ["viewer", "user", "supervisor", "owner"]


def expected_answer(role: str, upload: bool) -> str:
    if role not in ("supervisor", "owner"):
        return "not_supervisor"
    return "password" if upload else "clipboard_not_allowed"


@pytest.mark.parametrize("upload", [True, False], ids=["upload", "no-upload"])
@pytest.mark.parametrize("role", ROLES)
async def test_send_password_needs_supervisor_and_clipboard_upload(harness, openssh, role, upload):
    h = harness
    endpoint = vault(h, openssh)
    person(h, "carol", endpoint, role, upload)
    controller, joined = await start(h, "carol", endpoint)
    assert joined["role"] == "controller"
    expected = expected_answer(role, upload)

    answer = await send_password(controller)
    if expected == "password":
        assert answer == {"type": "password", "password": openssh.password}
        for uses in (1, 2):  # each use is one row: a second use adds a second
            if uses == 2:
                assert await send_password(controller) == answer
            rows = await h.audit("decrypt_field")
            assert len(rows) == uses, rows
            for row in rows:
                assert row["actor_name"] == "carol" and row["session_id"] == joined["session_id"]
                assert row["detail"] == {"endpoint_id": endpoint.id, "endpoint_name": "vault", "field": "password",
                                         "purpose": "send_password"}
        assert len([m for m in controller.raw if contains_secret(m, openssh.password)]) == 2
    else:
        assert answer["type"] == "refused" and answer["reason"] == expected and not answer.get("fatal"), answer
        assert await h.audit("decrypt_field") == []
        refused = [r for r in await h.audit("message_refused") if r["detail"]["message"] == "send_password"]
        assert [(r["actor_name"], r["detail"]["reason"], r["detail"]["role"]) for r in refused] == \
               [("carol", expected, "controller")]
        assert not any(contains_secret(m, openssh.password) for m in controller.raw)
    # the session goes on either way
    await controller.send(b"echo still-$((6*7))\r")
    await controller.output_contains(b"still-42", deadline=DEADLINE)
    assert not contains_secret(json.dumps(await h.audit(None)), openssh.password)  # every audit row


@pytest.mark.parametrize("stores", ["key", "nothing"])
async def test_an_endpoint_storing_no_password_has_none_to_send(harness, openssh, stores):
    h = harness
    endpoint = vault(h, openssh, stores)
    person(h, "carol", endpoint, "owner", True)
    # with nothing stored the controller types the password in: that one is never sent back
    typed = {"username": openssh.username, "password": openssh.password} if stores == "nothing" else None
    controller, joined = await start(h, "carol", endpoint, typed)
    answer = await send_password(controller)
    assert answer["type"] == "refused" and answer["reason"] == "no_stored_password", answer
    assert await h.audit("decrypt_field") == []
    assert not any(contains_secret(m, openssh.password) for m in controller.raw)
    assert not contains_secret(json.dumps(await h.audit(None)), openssh.password)


async def test_the_gateway_decides_again_at_each_use(harness, openssh):
    h = harness
    endpoint = vault(h, openssh)
    carol = person(h, "carol", endpoint, "owner", True)
    controller, joined = await start(h, "carol", endpoint)
    assert (await send_password(controller))["type"] == "password"
    repos = h.gateway.services
    # the administrator turns clipboard upload off in the middle of the session ...
    upload = profile(h, True)
    repos.profiles.update_profile(upload.id, upload.name, "allow", clipboard_upload=False)
    assert (await send_password(controller))["reason"] == "clipboard_not_allowed"
    # ... then on again, and lowers the role
    repos.profiles.update_profile(upload.id, upload.name, "allow", clipboard_upload=True)
    repos.grants.grant(endpoint.id, carol.id, "user", upload.id)
    assert (await send_password(controller))["reason"] == "not_supervisor"
    assert len(await h.audit("decrypt_field")) == 1


# --- 2. a viewer tries every message ---------------------------------------------------------------

OVERSIZED = 65536 + 1


@dataclass
class Attempt:
    """One message a viewer sends, and the answer it must get: a refusal (`reason`, `of`) or a pong."""

    message: dict[str, Any] | str | bytes
    reason: str | None  # None: answered with a pong
    of: str | None = None  # the refusal's `of` (None: none); for a pong, its id
    engine: bool = False  # refused by the engine (which audits it its own way), not by the gateway


def attempts(ids: dict[str, str]) -> list[Attempt]:
    """Every client message of docs/protocol.md as a viewer could send it, and its variants.
    `leave` comes last, separately. CONTROLLER/VIEWER/ENDPOINT are the session's own ids."""
    controller, viewer, endpoint = (ids[k] for k in ("CONTROLLER", "VIEWER", "ENDPOINT"))
    oversized_send = json.dumps({"type": "send_password", "pad": "p" * OVERSIZED})
    return [
        # start and join: only as a first message
        Attempt({"type": "start", "cols": 80, "rows": 24}, "unexpected_message", "start"),
        Attempt({"type": "start", "cols": 80, "rows": 24, "credentials": {"username": "root"}},
                "unexpected_message", "start"),
        Attempt({"type": "join"}, "unexpected_message", "join"),
        Attempt({"type": "join", "share": "forged"}, "unexpected_message", "join"),
        # terminal input (binary), even when it looks like a control message
        Attempt(b"echo $PASSWORD; cat ~/.ssh/*\r", "not_controller", "input"),
        Attempt(b'{"type":"send_password"}', "not_controller", "input"),
        Attempt(b"z" * OVERSIZED, "too_large", "binary"),
        # resize, stream, request_control, eject
        Attempt({"type": "resize", "cols": 100, "rows": 30}, "not_controller", "resize"),
        Attempt({"type": "stream", "rate": 1}, "not_controller", "stream"),
        Attempt({"type": "request_control"}, "control_not_transferable", "request_control", engine=True),
        Attempt({"type": "request_control", "field": "password"}, "malformed", "request_control"),
        Attempt({"type": "eject", "participant_id": controller, "reason": "password"}, "not_permitted", "eject",
                engine=True),
        Attempt({"type": "eject", "participant_id": "nobody-1"}, "not_a_participant", "eject", engine=True),
        Attempt({"type": "leave", "participant_id": controller}, "malformed", "leave"),
        # ping: answered, and nothing of the session in the answer
        Attempt({"type": "ping", "id": "password"}, None, "password"),
        Attempt({"type": "ping", "id": 7}, None, 7),
        Attempt({"type": "ping", "id": "x", "field": "password"}, "malformed", "ping"),
        Attempt({"type": "ping", "id": {"field": "password"}}, "malformed", "ping"),
        # send_password, plain and with every kind of extra field
        Attempt({"type": "send_password"}, "not_controller", "send_password"),
        Attempt({"type": "send_password", "password": True}, "malformed", "send_password"),
        Attempt({"type": "send_password", "field": "password"}, "malformed", "send_password"),
        Attempt({"type": "send_password", "participant_id": controller}, "malformed", "send_password"),
        Attempt({"type": "send_password", "participant_id": viewer}, "malformed", "send_password"),
        Attempt({"type": "send_password", "endpoint_id": endpoint}, "malformed", "send_password"),
        Attempt({"type": "send_password", "to": "viewer"}, "malformed", "send_password"),
        Attempt('{"type":"ping","type":"send_password"}', "not_controller", "send_password"),
        Attempt(oversized_send, "too_large", None),
        # what the gateway sends, sent back; other names for the same wish
        Attempt({"type": "password"}, "unknown_message", "password"),
        Attempt({"type": "password", "password": True}, "unknown_message", "password"),
        Attempt({"type": "decrypt_field", "field": "password"}, "unknown_message", "decrypt_field"),
        Attempt({"type": "get_password"}, "unknown_message", "get_password"),
        Attempt({"type": "SEND_PASSWORD"}, "unknown_message", "SEND_PASSWORD"),
        Attempt({"type": "credentials"}, "unknown_message", "credentials"),
        # not a message at all
        Attempt("send_password", "malformed", None),
        Attempt('["send_password"]', "malformed", None),
        Attempt('{"type":"send_password"', "malformed", None),
        Attempt({"type": ["send_password"]}, "malformed", None),
        Attempt({"type": None, "password": True}, "malformed", None),
        Attempt("", "malformed", None),
    ]


def answers(attempt: Attempt, barrier: Any) -> tuple[Any, Any]:
    """The predicates for the attempt's answer and for the ping that follows it."""
    if attempt.reason is None:
        def expected(m: dict[str, Any]) -> bool:
            return m["type"] == "pong" and m.get("id") == attempt.of
    else:
        def expected(m: dict[str, Any]) -> bool:
            return m["type"] == "refused" and m.get("of") == attempt.of and m["reason"] == attempt.reason
    return expected, (lambda m: m["type"] == "pong" and m.get("id") == barrier)


ANSWER_TYPES = ("refused", "pong", "password", "stream")


@pytest.mark.parametrize("viewer_role, upload, admin", [("viewer", False, False), ("owner", True, True)],
                         ids=["viewer", "admin-owner-with-upload"])
async def test_a_viewer_never_obtains_the_password(harness, openssh, viewer_role, upload, admin):
    h = harness
    secret = openssh.password
    endpoint = vault(h, openssh)
    person(h, "carol", endpoint, "supervisor", True)
    person(h, "victor", endpoint, viewer_role, upload, admin=admin)
    controller, joined = await start(h, "carol", endpoint)
    sid = joined["session_id"]
    viewer = await h.open("victor", f"/ws/sessions/{sid}")
    # before joining: only a join is accepted
    await viewer.send({"type": "send_password"})
    early = await viewer.answer(lambda m: m["type"] == "refused")
    assert (early["reason"], early.get("of"), early.get("fatal")) == ("unexpected_message", "send_password", None)
    await viewer.send({"type": "join"})
    vjoined = await viewer.control("joined", deadline=DEADLINE)
    assert vjoined["role"] == "viewer"
    await viewer.control("reset", deadline=DEADLINE)
    await controller.control("participant_joined", deadline=DEADLINE)

    # the controller's Send Password while the viewer watches
    assert await send_password(controller) == {"type": "password", "password": secret}

    ids = {"CONTROLLER": joined["participant_id"], "VIEWER": vjoined["participant_id"], "ENDPOINT": endpoint.id}
    for index, attempt in enumerate(attempts(ids)):
        start_at = len(viewer.controls)
        await viewer.send(attempt.message)
        barrier = f"after-{index}"
        await viewer.send({"type": "ping", "id": barrier})
        expected, done = answers(attempt, barrier)
        await viewer.seen(expected, start_at)
        await viewer.seen(done, start_at)
        window = [m for m in viewer.controls[start_at:] if m["type"] in ANSWER_TYPES]
        assert len(window) == 2 and any(expected(m) for m in window), (repr(attempt.message)[:200], window)
        assert not any(m.get("fatal") for m in window)

    # the controller uses it again after all that; the viewer still only watches
    assert (await send_password(controller))["type"] == "password"
    await controller.send(b"echo watched-$((7*7))\r")
    await viewer.output_contains(b"watched-49", deadline=DEADLINE)
    await viewer.send({"type": "leave"})  # the last message of all
    await viewer.until_closed(DEADLINE)
    await controller.control("participant_left", deadline=DEADLINE)

    # nothing the viewer received holds the password: not a message, not a frame, not the stream
    assert viewer.raw and viewer.binary_messages
    hay = Haystack(secret)
    for n, message in enumerate(viewer.raw):
        hay.scan(f"viewer frame {n}", message)
    hay.scan("viewer terminal output", viewer.output)
    hay.scan("viewer controls", json.dumps(viewer.controls))
    # the controller: exactly the two answers to its own Send Password
    for n, message in enumerate(without_the_answer(controller.raw)):
        hay.scan(f"controller frame {n}", message)
    hay.assert_clean()
    assert [m for m in controller.controls if m["type"] == "password"] == [{"type": "password", "password": secret}] * 2

    # every refusal was audited, the viewer's send_password as not_controller, and no row holds it
    rows = await h.audit(None)
    assert not contains_secret(json.dumps(rows), secret)
    decrypted = [r for r in rows if r["kind"] == "decrypt_field"]
    assert [r["actor_name"] for r in decrypted] == ["carol", "carol"]
    mine = [r for r in rows if r["actor_name"] == "victor"]
    refused = [r for r in mine if r["kind"] in ("message_refused", "input_refused")]
    # repeated refusals are counted in one row (docs/audit.md): each row stands for `count`
    audited = Counter()
    for r in refused:
        audited[(r["kind"], r["detail"]["reason"], r["detail"]["message"])] += r["detail"].get("count", 1)
    wanted = Counter(("input_refused" if a.of == "input" else "message_refused", a.reason,
                      a.of if a.of in wire.KINDS else "unknown")
                     for a in attempts(ids) if a.reason is not None and not a.engine)
    wanted[("message_refused", "unexpected_message", "send_password")] += 1  # the one before the join
    assert audited == wanted
    assert audited[("message_refused", "not_controller", "send_password")] == 2  # plain, and the duplicate key
    assert sum(r["detail"].get("count", 1) for r in refused if r["detail"]["role"] == "viewer") == wanted.total() - 1
    assert [r["detail"]["role"] for r in refused].count("none") == 1
    assert len([r for r in mine if r["kind"] == "transfer_refused"]) == 1
    assert len([r for r in mine if r["kind"] == "eject_refused"]) == 2
    # and the session went on for the controller
    await controller.send(b"echo alone-$((8*8))\r")
    await controller.output_contains(b"alone-64", deadline=DEADLINE)


# --- 3. the whole story, then the scan ---------------------------------------------------------------

ALL_TEXT = """() => {
  const b = window.cosessionTerminal.buffer.active, rows = [];
  for (let y = 0; y < b.length; y++) rows.push(b.getLine(y).translateToString(true));
  return rows.join("\\n");
}"""
STORAGE = """() => JSON.stringify({local: {...localStorage}, session: {...sessionStorage}, url: location.href,
  title: document.title, cosession: window.cosession ? Object.fromEntries(Object.entries(window.cosession)
    .filter(([k, v]) => v === null || ["string", "number", "boolean"].includes(typeof v))) : null})"""


@dataclass
class Evidence:
    """What the story saw, for the scan."""

    base_url: str
    pages: list[tuple[str, str | bytes]] = field(default_factory=list)  # (where, body)
    frames: list[tuple[str, str, str | bytes]] = field(default_factory=list)  # (who, direction, payload)
    contexts: list[BrowserContext] = field(default_factory=list)

    def record_frames(self, context: BrowserContext, who: str) -> None:
        """Every websocket frame of every page of `context`, from its first page on."""
        def on_socket(ws: Any) -> None:
            ws.on("framereceived", lambda payload: self.frames.append((who, "received", payload)))
            ws.on("framesent", lambda payload: self.frames.append((who, "sent", payload)))

        context.on("page", lambda page: page.on("websocket", on_socket))

    def received(self, who: str) -> list[str | bytes]:
        return [p for w, d, p in self.frames if w == who and d == "received"]

    def snapshot(self, page: Page, label: str, *, terminal: bool = False) -> None:
        self.pages.append((f"{label} DOM", page.content()))
        self.pages.append((f"{label} storage", page.evaluate(STORAGE)))
        if terminal:
            self.pages.append((f"{label} terminal", page.evaluate(ALL_TEXT)))

    def visit(self, page: Page, path: str, label: str, status: int = 200) -> None:
        answer = page.goto(path if path.startswith("http") else self.base_url + path)
        assert answer is not None and answer.status == status, (label, path, answer and answer.status)
        self.pages.append((f"{label} {path}", answer.body()))
        self.snapshot(page, f"{label} {path}")

    def fetch(self, client: Any, path: str, label: str, status: int = 200) -> str:
        answer = client.get(path)
        assert answer.status_code == status, (label, path, answer.status_code, answer.text[:300])
        self.pages.append((f"{label} {path}", answer.content))
        self.pages.append((f"{label} {path} headers", json.dumps(dict(answer.headers))))
        return answer.text


def capture_every_log(caplog: pytest.LogCaptureFixture) -> None:
    """caplog at DEBUG for the root logger and every logger there is, whatever its own level;
    a logger that does not propagate gets caplog's handler itself."""
    import protocols.ssh  # noqa: F401  (its loggers, and asyncssh's, exist from now on)

    caplog.set_level(logging.DEBUG)
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger):
            caplog.set_level(logging.DEBUG, logger=name)
            if not logger.propagate and caplog.handler not in logger.handlers:
                logger.addHandler(caplog.handler)


def release_logs(caplog: pytest.LogCaptureFixture) -> None:
    for logger in list(logging.root.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger) and caplog.handler in logger.handlers:
            logger.removeHandler(caplog.handler)


def type_line(page: Page, text: str) -> None:
    page.locator(".xterm-helper-textarea").focus()
    page.keyboard.type(text)
    page.keyboard.press("Enter")


def wait_for_text(page: Page, text: str) -> None:
    page.wait_for_function(f"(needle) => ({ALL_TEXT})().includes(needle)", arg=text)


def admin_form(admin: Any, evidence: Evidence, path: str, **data: str) -> None:
    """POST an administrators' form, and fetch the page it redirects to (with its flash)."""
    answer = admin.post(path, data=data)
    assert answer.status_code == 303, (path, answer.status_code, answer.text[:300])
    evidence.fetch(admin, answer.headers["location"], f"admin after POST {path}")


def signed_in(gateway: Any, browser: Browser, evidence: Evidence, name: str, *, clipboard: bool = False) -> Page:
    context = browser.new_context(viewport={"width": 1100, "height": 700})
    evidence.contexts.append(context)
    if clipboard:
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=gateway.base_url)
    evidence.record_frames(context, name)
    page = context.new_page()
    page.set_default_timeout(WAIT)
    gateway.login(page, name, PASSWORD)
    evidence.snapshot(page, f"{name} after sign-in")
    return page


def run_story(gateway: Any, browser: Browser, openssh: Any, evidence: Evidence) -> tuple[str, str]:
    """The story, from the endpoint's creation to the session's end; (endpoint id, session id)."""
    secret = openssh.password
    gateway.create_user("root", PASSWORD, admin=True)
    gateway.create_user("alice", PASSWORD)
    gateway.create_user("bob", PASSWORD)
    admin = gateway.api_session("root", PASSWORD)

    # the administrator creates the endpoint with its password (API) and gives access (admin pages)
    created = admin.post("/api/endpoints", json={
        "name": "vault", "protocol": "ssh", "host": openssh.host, "port": openssh.port,
        "username": openssh.username, "password": secret, "host_key": openssh.host_key})
    assert created.status_code == 201, created.text
    evidence.pages.append(("admin POST /api/endpoints answer", created.content))
    endpoint_id = created.json()["endpoint"]["id"]
    admin_form(admin, evidence, "/profiles", name="Ops", web_session="allow", clipboard_upload="on")
    ops = gateway.services.profiles.profile("Ops")
    assert ops is not None and ops.clipboard_upload
    admin_form(admin, evidence, f"/endpoints/{endpoint_id}/roles", kind="user", name="alice", role="supervisor")
    admin_form(admin, evidence, f"/endpoints/{endpoint_id}/profiles", kind="user", name="alice", profile=ops.id)
    admin_form(admin, evidence, f"/endpoints/{endpoint_id}/roles", kind="user", name="bob", role="viewer")
    for path in ("/endpoints", f"/endpoints/{endpoint_id}/edit", f"/api/endpoints/{endpoint_id}"):
        evidence.fetch(admin, path, "admin before")

    # the controller: dashboard, connections, the endpoint, the launcher; then the launch
    alice = signed_in(gateway, browser, evidence, "alice", clipboard=True)
    for path in ("/", "/connections", f"/endpoints/{endpoint_id}", f"/endpoints/{endpoint_id}?tab=settings",
                 f"/launch/{endpoint_id}"):
        evidence.visit(alice, path, "alice")
    with alice.expect_navigation() as navigation:
        gateway.launch(alice, endpoint_id)
    evidence.pages.append(("alice launch page", navigation.value.body()))
    alice.wait_for_function("() => window.cosession.role === 'controller' && window.cosession.state === 'active'")
    sid = alice.evaluate("() => window.cosession.sessionId")
    type_line(alice, "echo story-$((6*7)); whoami")
    wait_for_text(alice, "story-42")

    # the viewer: its pages, then the share link and its join dialog
    bob = signed_in(gateway, browser, evidence, "bob")
    evidence.visit(bob, "/", "bob")
    evidence.visit(bob, "/connections", "bob")
    evidence.visit(bob, f"/endpoints/{endpoint_id}", "bob")
    evidence.visit(bob, f"/launch/{endpoint_id}", "bob", status=403)  # a viewer's role, no profile
    share_url = alice.get_by_test_id("share-url").input_value()
    evidence.visit(bob, share_url, "bob share link")
    with bob.context.expect_page() as opened:
        bob.get_by_test_id("join").click()
    watcher = opened.value
    watcher.set_default_timeout(WAIT)
    watcher.wait_for_function("() => window.cosession && window.cosession.role === 'viewer'")
    wait_for_text(watcher, "story-42")
    expect(alice.get_by_test_id("viewer-count")).to_have_text("1")
    for name in ("alice", "bob"):  # the live session's page as each would load it
        evidence.fetch(gateway.api_session(name, PASSWORD), f"/sessions/{sid}", f"{name} live session page")
    evidence.fetch(admin, f"/api/sessions/{sid}", "admin live")
    evidence.fetch(admin, "/api/sessions", "admin live")

    # Send Password, allowed: on the controller's clipboard, nowhere on its page
    send = alice.get_by_test_id("send-password")
    expect(send).to_be_visible()
    send.click()
    expect(alice.get_by_test_id("notice")).to_have_attribute("data-reason", "password_copied")
    assert alice.evaluate("() => navigator.clipboard.readText()") == secret
    expect(watcher.get_by_test_id("send-password")).to_be_hidden()
    # the same from the in-session toolbar (the viewer's has no such item)
    alice.evaluate("() => navigator.clipboard.writeText('')")
    alice.get_by_test_id("toolbar-handle").click()
    alice.get_by_test_id("toolbar-password").click()
    alice.wait_for_function("(s) => navigator.clipboard.readText().then((t) => t === s)", arg=secret)
    watcher.get_by_test_id("toolbar-handle").click()
    expect(watcher.get_by_test_id("toolbar-password")).to_be_hidden()
    # the viewer tries it from its page: refused
    watcher.evaluate("() => window.cosession.ws.send(JSON.stringify({type: 'send_password'}))")
    expect(watcher.get_by_test_id("notice")).to_have_attribute("data-reason", "not_controller")
    type_line(alice, "echo after-$((7*7))")
    wait_for_text(watcher, "after-49")
    evidence.snapshot(alice, "alice live session", terminal=True)
    evidence.snapshot(watcher, "bob live session", terminal=True)

    # the controller ends the session
    alice.once("dialog", lambda dialog: dialog.accept())
    alice.locator("#leave").click()
    for page in (alice, watcher):
        page.wait_for_function("() => window.cosession.state === 'ended'")
    evidence.snapshot(alice, "alice ended session", terminal=True)
    evidence.snapshot(watcher, "bob ended session", terminal=True)
    assert any(isinstance(p, str) and json.loads(p).get("type") == "ended" for p in evidence.received("bob"))

    # afterwards: everyone's pages, the audit pages and every export
    for name, page in (("alice", alice), ("bob", bob)):
        for path in ("/", "/connections", f"/endpoints/{endpoint_id}"):
            evidence.visit(page, path, f"{name} after")
        evidence.visit(page, f"/sessions/{sid}", f"{name} after", status=410)
    for path in ("/", "/connections", "/endpoints", f"/endpoints/{endpoint_id}",
                 f"/endpoints/{endpoint_id}?tab=settings", f"/endpoints/{endpoint_id}/edit",
                 f"/endpoints/{endpoint_id}/delete", f"/launch/{endpoint_id}", "/profiles", "/groups", "/account",
                 "/audit", f"/audit?session={sid}", "/audit?kind=decrypt_field", "/audit?kind=credential_use",
                 "/audit?actor=alice", "/audit/export.csv", "/audit/export.json", f"/audit/export.json?session={sid}",
                 "/api/audit?limit=500", "/api/audit?order=oldest&limit=500", "/api/audit/export?format=csv",
                 "/api/audit/export?format=json", "/api/endpoints", f"/api/endpoints/{endpoint_id}",
                 "/api/sessions", "/api/connections", "/api/me"):
        evidence.fetch(admin, path, "admin after", status=403 if path.startswith("/launch/") else 200)
    evidence.fetch(admin, f"/sessions/{sid}", "admin after", status=410)
    return endpoint_id, sid


def scan_database(gateway: Any, hay: Haystack, endpoint_id: str) -> dict[str, int]:
    """Every row of every table (reflected from the file, not from our models); rows per table."""
    db = sa.create_engine(gateway.settings.database_url)
    counts: dict[str, int] = {}
    try:
        metadata = sa.MetaData()
        metadata.reflect(db)
        with db.connect() as conn:
            for table in metadata.sorted_tables:
                rows = conn.execute(sa.select(table)).all()
                counts[table.name] = len(rows)
                for n, row in enumerate(rows):
                    for column, value in row._mapping.items():
                        if table.name == "endpoints" and column == "secret" and value is not None:
                            continue  # checked below: the one place the password is, encrypted
                        if isinstance(value, (str, bytes, bytearray, memoryview)):
                            hay.scan(f"database {table.name}[{n}].{column}",
                                     bytes(value) if isinstance(value, memoryview) else value)
                        elif value is not None:
                            hay.scan(f"database {table.name}[{n}].{column}", repr(value))
            blob = conn.execute(sa.text("SELECT secret, secret_kind FROM endpoints WHERE id = :id"),
                                {"id": endpoint_id}).one()
    finally:
        db.dispose()
    # the stored password: an AES-GCM blob (version, nonce, ciphertext, tag), never the password
    secret, kind = bytes(blob.secret), blob.secret_kind
    assert kind == "password" and secret[:1] == b"\x01" and len(secret) >= 1 + 12 + 16 + len(hay.secret)
    hay.scan("database endpoints.secret (encrypted)", secret)
    return counts


@pytest.mark.browser
def test_the_password_appears_in_no_log_page_frame_or_row(live_gateway, browser, openssh, caplog, capfd):
    secret = openssh.password
    evidence = Evidence(live_gateway.base_url)
    capture_every_log(caplog)
    try:
        endpoint_id, sid = run_story(live_gateway, browser, openssh, evidence)
        # the endpoint's row holds the password, encrypted: the blob scanned below is that one
        assert live_gateway.services.endpoints.stored_credentials(endpoint_id).password == secret
    finally:
        for context in evidence.contexts:
            context.close()
        live_gateway.stop()  # every log line of the shutdown too, and the database files closed
        release_logs(caplog)
    hay = Haystack(secret)

    # the audit log says what happened: two decrypts (the bar's and the toolbar's Send Password),
    # the stored credentials used once
    db = sa.create_engine(live_gateway.settings.database_url)
    try:
        with db.connect() as conn:
            audit = [dict(r._mapping) for r in conn.execute(sa.text("SELECT * FROM audit_events ORDER BY id"))]
    finally:
        db.dispose()
    decrypts = [r for r in audit if r["kind"] == "decrypt_field"]
    assert len(decrypts) == 2 and all(d["session_id"] == sid and d["actor_name"] == "alice" for d in decrypts)
    assert all(json.loads(d["detail"]) == {"endpoint_id": endpoint_id, "endpoint_name": "vault",
                                           "field": "password", "purpose": "send_password"} for d in decrypts)
    uses = [json.loads(r["detail"]) for r in audit if r["kind"] == "credential_use"]
    assert [u["source"] for u in uses] == ["stored"]

    # (a) logs: every record at every level, and every file of the data directory
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(threadName)s %(message)s")
    assert caplog.records
    for n, record in enumerate(caplog.records):
        hay.scan(f"log record {n} {record.name}", formatter.format(record))
        hay.scan(f"log record {n} {record.name} args", repr(record.args) + repr(record.__dict__))
    captured = capfd.readouterr()
    hay.scan("stdout", captured.out)
    hay.scan("stderr", captured.err)
    files = [p for p in live_gateway.data_dir.rglob("*") if p.is_file()]
    assert any(p.name == "cosession.db" for p in files)
    for path in files:
        hay.scan(f"data file {path.relative_to(live_gateway.data_dir)}", path.read_bytes())

    # (b) every page fetched by the administrator, the controller and the viewer
    assert len(evidence.pages) > 80
    exports = [body for where, body in evidence.pages if "export" in where and "headers" not in where]
    assert len(exports) == 5 and all(b"decrypt_field" in body and endpoint_id.encode() in body for body in exports)
    for where, body in evidence.pages:
        hay.scan(f"page {where}", body)

    # (c) every websocket frame: the viewer's all, the controller's all but the two answers
    for who in ("alice", "bob"):
        assert any(isinstance(p, bytes) for p in evidence.received(who)), who  # terminal output was captured
        assert any(isinstance(p, str) and json.loads(p).get("type") == "joined" for p in evidence.received(who))
    holding = [p for p in evidence.received("alice") if contains_secret(p, secret)]
    assert holding == [json.dumps({"type": "password", "password": secret}, separators=(",", ":"))] * 2
    for n, (who, direction, payload) in enumerate(evidence.frames):
        if not (who == "alice" and direction == "received" and payload in holding):
            hay.scan(f"frame {n} {direction} by {who}", payload)
    bob_output = b"".join(p for p in evidence.received("bob") if isinstance(p, bytes))
    assert b"after-49" in bob_output
    hay.scan("bob's terminal stream", bob_output)

    # (d) every row of every table, the endpoint's secret an encrypted blob
    counts = scan_database(live_gateway, hay, endpoint_id)
    assert counts["endpoints"] == 1 and counts["audit_events"] == len(audit) > 20
    hay.scan("audit rows", json.dumps(audit, default=str))

    assert {"page", "frame", "log", "data", "database", "audit", "stdout", "stderr"} <= set(hay.searched)
    hay.assert_clean()


def test_request_access_and_waiting_for_approval_in_chromium(live_gateway, browser, openssh):
    """The unlock workflow: where the endpoint requires approval and the controller holds no open
    approval, Send Password says Request Access (the send is refused `approval_required`,
    audited), which opens the request screen; once the request is filed it says Waiting for
    Approval, on the bar and in the toolbar; once an approver approves, it says Send Password
    again, and sends."""
    services = live_gateway.services
    endpoint = live_gateway.create_endpoint("vault", EndpointProtocol.SSH, openssh.host, openssh.port,
                                            username=openssh.username, password=openssh.password,
                                            host_key=openssh.host_key)
    for name in ("alice", "carol"):
        live_gateway.create_user(name, PASSWORD)
    ops = services.profiles.create_profile("Ops", "allow", clipboard_upload=True)
    services.grants.grant(endpoint.id, services.users.get_by_name("alice").id, "supervisor", ops.id)
    services.grants.grant(endpoint.id, services.users.get_by_name("carol").id, "user")
    services.approvers.add_approver(endpoint.id, services.grants.principal("user", "carol"))
    context = browser.new_context(permissions=["clipboard-read", "clipboard-write"])
    try:
        alice = context.new_page()
        alice.set_default_timeout(WAIT)
        live_gateway.login(alice, "alice", PASSWORD)
        live_gateway.launch(alice, endpoint)
        alice.wait_for_function("() => window.cosession.role === 'controller' && window.cosession.state === 'active'")
        send = alice.get_by_test_id("send-password")
        expect(send).to_have_text("Send Password")

        # approval required from now on: the password is locked until the controller's request is approved
        services.approvers.set_requires_approval(endpoint.id, True)
        send.click()
        expect(alice.get_by_test_id("notice")).to_have_attribute("data-reason", "approval_required")
        expect(send).to_have_text("Request Access")
        with context.expect_page() as opened:
            send.click()
        form = opened.value
        form.set_default_timeout(WAIT)
        expect(form.get_by_test_id("request-form")).to_be_visible()
        form.get_by_test_id("duration").fill("30")
        form.get_by_test_id("reason").fill("the password for the maintenance window")
        form.get_by_test_id("submit-request").click()
        form.wait_for_url("**/access-requests/*")
        expect(send).to_have_text("Waiting for Approval")
        alice.get_by_test_id("toolbar-handle").click()
        expect(alice.get_by_test_id("toolbar-password")).to_have_text("Waiting for Approval")

        request_id = form.url.rsplit("/", 1)[1]
        approved = live_gateway.api_session("carol", PASSWORD).post(
            f"/access-requests/{request_id}/decide", json={"decision": "approve"}, headers={"Accept": "application/json"})
        assert approved.status_code == 200, approved.text
        expect(send).to_have_text("Send Password")
        expect(alice.get_by_test_id("notice")).to_have_attribute("data-reason", "password_unlocked")
        send.click()
        expect(alice.get_by_test_id("notice")).to_have_attribute("data-reason", "password_copied")
        assert alice.evaluate("() => navigator.clipboard.readText()") == openssh.password
    finally:
        context.close()
    live_gateway.engine.flush_audit()
    refused = [r["detail"]["reason"] for r in services.audit_reader.events(kind="message_refused")[0]
               if r["detail"]["message"] == "send_password"]
    assert refused == ["approval_required"]
    assert len(services.audit_reader.events(kind="decrypt_field")[0]) == 1
