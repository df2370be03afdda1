"""Joint SSH sessions end to end: headless Chromium (Playwright) on the real gateway, a real
OpenSSH server, and the test user's home directory as the witness of what reached the server."""

from __future__ import annotations

import json
import shutil
import time
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from engine.messages import EndpointProtocol, User
from tests.fixtures.browser import CONTROLLING, WAIT, BrowserSite
from tests.fixtures.gateway import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.openssh]


SCREEN = """() => {
  const t = window.cosessionTerminal, b = t.buffer.active, rows = [];
  for (let y = 0; y < t.rows; y++) {
    const line = b.getLine(b.baseY + y);
    rows.push(line ? line.translateToString(true) : "");
  }
  return rows.join("\\n");
}"""
ALL_TEXT = """() => {
  const b = window.cosessionTerminal.buffer.active, rows = [];
  for (let y = 0; y < b.length; y++) rows.push(b.getLine(y).translateToString(true));
  return rows.join("\\n");
}"""


@pytest.fixture
def gateway_overrides():
    # a dead sshd fails the session after one quick retry
    return {"engine": {"endpoint_retries": 1, "endpoint_backoff_seconds": 0.1}}


class Site(BrowserSite):
    context_options = {"viewport": {"width": 1100, "height": 700}}

    def __init__(self, gateway: Any, browser: Browser, openssh: Any) -> None:
        super().__init__(gateway, browser)
        self.openssh = openssh
        self.endpoint = gateway.create_endpoint(
            "box", EndpointProtocol.SSH, openssh.host, openssh.port, username=openssh.username,
            host_key=openssh.host_key)
        self.stored = gateway.create_endpoint(
            "box-stored", EndpointProtocol.SSH, openssh.host, openssh.port, username=openssh.username,
            password=openssh.password, host_key=openssh.host_key)

    def user(self, name: str, *, admin: bool = False, grant: bool = True) -> User:
        user = self.gateway.create_user(name, PASSWORD, admin=admin)
        if grant:
            self.gateway.grant(self.endpoint, user)
            self.gateway.grant(self.stored, user)
        return user

    def start(self, page: Page, *, typed: bool = True) -> str:
        """Start a session on the endpoint through the launcher; the session id."""
        typed_credentials = {"username": self.openssh.username, "password": self.openssh.password}
        session_id = super().start(page, self.endpoint if typed else self.stored, ready=CONTROLLING,
                                   **(typed_credentials if typed else {}))
        run(page, "echo ready-$((40+2))", "ready-42")
        return session_id

    def join(self, name: str, share_url: str) -> Page:
        """Open the share link, accept the join dialog, and return the window it opens."""
        page = self.signed_in(name)
        page.goto(share_url)
        expect(page.get_by_test_id("join-dialog")).to_be_visible()
        with page.context.expect_page() as opened:
            page.get_by_test_id("join").click()
        viewer = opened.value
        viewer.set_default_timeout(WAIT)
        viewer.wait_for_function("() => window.cosession && (window.cosession.role !== null || window.cosession.fatal)")
        return viewer


@pytest.fixture
def site(live_gateway, browser, openssh):
    with Site(live_gateway, browser, openssh) as s:
        yield s


def type_line(page: Page, text: str) -> None:
    page.locator(".xterm-helper-textarea").focus()
    page.keyboard.type(text)
    page.keyboard.press("Enter")


def run(page: Page, command: str, expected: str) -> None:
    type_line(page, command)
    wait_for_text(page, expected)


def wait_for_text(page: Page, text: str) -> None:
    page.wait_for_function(f"(needle) => ({ALL_TEXT})().includes(needle)", arg=text)


def share_url(page: Page) -> str:
    return page.get_by_test_id("share-url").input_value()


def test_the_controller_runs_a_command_and_the_viewer_sees_its_output(site):
    site.user("alice")
    site.user("bob")
    alice = site.signed_in("alice")
    sid = site.start(alice)
    assert alice.url.endswith(f"/sessions/{sid}")  # a reload comes back to the session
    assert site.openssh.password not in alice.url
    frames: list[Any] = []
    bob = site.join("bob", share_url(alice))
    bob.on("websocket", lambda ws: ws.on("framereceived", lambda f: frames.append(f)))
    expect(bob.get_by_test_id("role")).to_have_attribute("data-role", "viewer")
    expect(bob.get_by_test_id("readonly-note")).to_be_visible()
    expect(alice.get_by_test_id("viewer-count")).to_have_text("1")
    expect(alice.get_by_test_id("viewers")).to_contain_text("bob")

    run(alice, "echo out-$((6*7))", "out-42")
    wait_for_text(bob, "out-42")

    # the controller's credentials reached the gateway only: not the viewer, a page, the audit
    for page in (alice, bob):
        assert site.openssh.password not in page.content()
    assert not any(site.openssh.password in (f if isinstance(f, str) else f.decode("latin-1")) for f in frames)
    site.gateway.engine.flush_audit()
    rows, _ = site.gateway.services.audit_reader.events(limit=10_000)
    assert site.openssh.password not in json.dumps(rows)
    assert any(r["kind"] == "credential_use" and r["detail"]["source"] == "entered" for r in rows)


def test_a_viewers_keystrokes_never_reach_the_server(site):
    site.user("alice")
    site.user("bob")
    alice = site.signed_in("alice")
    site.start(alice)
    bob = site.join("bob", share_url(alice))
    home = site.openssh.home
    typed, forced = home / "viewer-typed-this", home / "viewer-forced-this"
    for path in (typed, forced):
        path.unlink(missing_ok=True)

    # typing into the read-only terminal sends nothing ...
    type_line(bob, f"touch {typed}")
    # ... and input forced onto the viewer's websocket is refused by the gateway
    bob.evaluate("(cmd) => window.cosession.ws.send(new TextEncoder().encode(cmd))", f"touch {forced}\r")
    expect(bob.get_by_test_id("notice")).to_have_attribute("data-reason", "not_controller")
    expect(bob.get_by_test_id("notice")).to_contain_text("Read-only")

    # the controller's shell, after all that: neither file exists on the server
    run(alice, f"ls -a {home}; echo listed-$((2*21))", "listed-42")
    assert not typed.exists() and not forced.exists()
    assert "viewer-typed-this" not in alice.evaluate(ALL_TEXT)
    assert "viewer-forced-this" not in alice.evaluate(ALL_TEXT)
    site.gateway.engine.flush_audit()
    rows, _ = site.gateway.services.audit_reader.events(kind="input_refused")
    assert [r["actor_name"] for r in rows] == ["bob"]


def test_the_eleventh_viewer_is_refused_in_its_page_with_the_reason(site):
    site.user("alice")
    alice = site.signed_in("alice")
    sid = site.start(alice, typed=False)
    for n in range(9):  # nine viewers through the engine, the tenth in a browser
        viewer = site.user(f"viewer{n}")
        joined = site.gateway.engine.join_session(sid, viewer)
        assert joined.role.value == "viewer"
    site.user("tenth")
    tenth = site.join("tenth", share_url(alice))
    expect(tenth.get_by_test_id("role")).to_have_attribute("data-role", "viewer")
    expect(alice.get_by_test_id("viewer-count")).to_have_text("10")

    site.user("eleventh")
    eleventh = site.join("eleventh", share_url(alice))
    notice = eleventh.get_by_test_id("notice")
    expect(notice).to_have_attribute("data-reason", "viewer_cap")
    expect(notice).to_contain_text("already has 10 viewers")
    expect(eleventh.get_by_test_id("state")).to_have_text("refused")
    # nothing else changed
    expect(alice.get_by_test_id("viewer-count")).to_have_text("10")
    run(alice, "echo still-$((3*3))", "still-9")
    wait_for_text(tenth, "still-9")


def test_a_viewer_who_joins_while_top_runs_sees_the_controllers_screen(site):
    site.user("alice")
    site.user("bob")
    alice = site.signed_in("alice")
    site.start(alice, typed=False)
    type_line(alice, "top -d 2")
    alice.wait_for_function(f"() => ({SCREEN})().includes('load average')")

    bob = site.join("bob", share_url(alice))
    bob.wait_for_function(f"() => ({SCREEN})().includes('load average')")
    assert bob.evaluate("() => [window.cosessionTerminal.cols, window.cosessionTerminal.rows]") == \
        alice.evaluate("() => [window.cosessionTerminal.cols, window.cosessionTerminal.rows]")

    # top redraws every 2 s: the screens are the same between two redraws
    viewer_screen = same_screens(alice, bob)
    assert "PID" in viewer_screen and "load average" in viewer_screen
    # the viewer's screen was built by a keyframe, after its join (how fast is for bench/)
    timings = bob.evaluate("() => window.cosession.timings")
    assert timings["connect"] <= timings["joined"] <= timings["keyframe"], timings

    alice.locator(".xterm-helper-textarea").focus()
    alice.keyboard.press("q")
    # top flushes typed-ahead input when it restores the terminal: type once the shell's
    # prompt is back under the cursor
    alice.wait_for_function("""() => {
        const b = window.cosessionTerminal.buffer.active;
        return /[$#] ?$/.test(b.getLine(b.baseY + b.cursorY).translateToString(true));
    }""")
    run(alice, "echo after-top-$((1+1))", "after-top-2")
    wait_for_text(bob, "after-top-2")


FULL_SCREEN = [
    # (program, command, text on its first screen, keys that quit it)
    ("less", "seq 1000 | less", "\\n12\\n", ["q"]),
    ("vim", "seq 1000 > /tmp/cosession-vim.txt; vim -u NONE -n /tmp/cosession-vim.txt", "\\n12\\n",
     ["Escape", ":", "q", "!", "Enter"]),
]


@pytest.mark.parametrize("program, command, visible, quit_keys", FULL_SCREEN, ids=["less", "vim"])
def test_a_viewer_who_joins_a_full_screen_program_gets_it_and_the_shell_beneath(site, program, command,
                                                                                 visible, quit_keys):
    if not shutil.which(program):
        pytest.skip(f"{program} is not installed on this machine")
    site.user("alice")
    site.user("bob")
    alice = site.signed_in("alice")
    site.start(alice, typed=False)
    run(alice, "echo below-it-$((5+5))", "below-it-10")
    type_line(alice, command)
    alice.wait_for_function("() => window.cosessionTerminal.buffer.active.type === 'alternate'")
    alice.wait_for_function(f"() => ({SCREEN})().includes('{visible}')")

    bob = site.join("bob", share_url(alice))
    bob.wait_for_function("() => window.cosessionTerminal.buffer.active.type === 'alternate'")
    same_screens(alice, bob)

    # leaving it, the viewer's terminal comes back to the shell as it was beneath
    alice.locator(".xterm-helper-textarea").focus()
    for key in quit_keys:
        alice.keyboard.press(key)
    bob.wait_for_function("() => window.cosessionTerminal.buffer.active.type === 'normal'")
    wait_for_text(bob, "below-it-10")
    run(alice, "echo after-it", "after-it")
    wait_for_text(bob, "after-it")
    same_screens(alice, bob)


def same_screens(controller: Page, viewer: Page, deadline: float = 10.0) -> str:
    """Wait until both pages render the same screen (a program that redraws may be caught
    between two redraws on one page); the screen."""
    end = time.monotonic() + deadline
    while True:
        controller_screen, viewer_screen = controller.evaluate(SCREEN), viewer.evaluate(SCREEN)
        if controller_screen == viewer_screen:
            return viewer_screen
        assert time.monotonic() < end, f"screens differ:\n{controller_screen}\n---\n{viewer_screen}"
        viewer.wait_for_timeout(50)  # a poll interval between two reads of both screens


def test_killing_sshd_ends_the_session_with_endpoint_failed_in_every_page(site):
    site.user("alice")
    site.user("bob")
    alice = site.signed_in("alice")
    site.start(alice, typed=False)
    bob = site.join("bob", share_url(alice))
    expect(bob.get_by_test_id("role")).to_have_attribute("data-role", "viewer")
    site.openssh.kill()
    for page in (alice, bob):
        expect(page.get_by_test_id("notice")).to_have_attribute("data-reason", "endpoint_failed")
        expect(page.get_by_test_id("notice")).to_contain_text("connection to the endpoint failed")
        expect(page.get_by_test_id("state")).to_have_text("ended")
