"""The in-session toolbar, chat and pointer in headless Chromium, on the real gateway and a real
OpenSSH server, with a controller and two viewers. Page time is Playwright's clock
(`page.clock`): the toolbar's 5-second auto-close and the pointer's few seconds are run through,
never waited for."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.fixtures.screenshots import VIEWPORT, save_screenshot
from tests.dashboard.test_session_browser import SCREEN, Site, run, share_url, wait_for_text

pytestmark = [pytest.mark.browser, pytest.mark.openssh]

HOSTILE = '<img src=x onerror="window.pwned=1">look at PID 1'


class ToolbarSite(Site):
    context_options = {"viewport": VIEWPORT,  # the screenshot's: markers stay in place
                       "permissions": ["clipboard-read", "clipboard-write"]}

    def prepare(self, page: Page) -> None:
        page.clock.install()  # time flows until a test pauses it


@pytest.fixture
def site(live_gateway, browser, openssh):
    with ToolbarSite(live_gateway, browser, openssh) as s:
        yield s


def pause(page: Page) -> None:
    """Stop the page's clock (from now on only run_for moves it)."""
    page.clock.pause_at(page.evaluate("() => Date.now()") / 1000 + 1)  # Playwright for Python: seconds


def toolbar(page: Page) -> Any:
    return page.get_by_test_id("toolbar")


def open_toolbar(page: Page) -> None:
    """The handle toggles the toolbar: open it unless it is open already."""
    if toolbar(page).is_hidden():
        page.get_by_test_id("toolbar-handle").click()
    expect(toolbar(page)).to_be_visible()


def test_the_toolbar_chat_and_pointer_with_a_controller_and_two_viewers(site):
    for name in ("alice", "bob", "carol", "dave"):
        site.user(name)
    alice = site.signed_in("alice")
    sid = site.start(alice)
    link = share_url(alice)
    bob = site.join("bob", link)
    carol = site.join("carol", link)
    expect(alice.get_by_test_id("viewer-count")).to_have_text("2")

    # every page has the handle at the top centre; the toolbar opens on it
    for page in (alice, bob, carol):
        handle = page.get_by_test_id("toolbar-handle")
        expect(handle).to_be_visible()
        box, stage = handle.bounding_box(), page.locator("#stage").bounding_box()
        assert abs(box["x"] + box["width"] / 2 - (stage["x"] + stage["width"] / 2)) < 2
        assert abs(box["y"] - stage["y"]) < 2
        expect(toolbar(page)).to_be_hidden()
        page.mouse.move(5, 5)
        handle.click()
        expect(toolbar(page)).to_be_visible()
        expect(page.get_by_test_id("toolbar-asset")).to_have_text("Asset box")
        expect(page.get_by_test_id("toolbar-expiration")).to_be_hidden()  # no approval
    # each role sees its own items only
    expect(alice.get_by_test_id("toolbar-disconnect")).to_have_text("Disconnect")
    expect(alice.get_by_test_id("toolbar-point")).to_be_hidden()
    # Files: offered to the controller, disabled with the reason while its profile forbids it
    expect(alice.get_by_test_id("toolbar-files")).to_be_disabled()
    expect(alice.get_by_test_id("toolbar-files")).to_have_attribute(
        "title", "Your access profile does not allow file transfer")
    for viewer in (bob, carol):
        expect(viewer.get_by_test_id("toolbar-files")).to_be_hidden()
        expect(viewer.get_by_test_id("toolbar-paste")).to_be_hidden()
        expect(viewer.get_by_test_id("toolbar-keyboard")).to_be_hidden()
        expect(viewer.get_by_test_id("toolbar-disconnect")).to_have_text("Leave")
        expect(viewer.get_by_test_id("toolbar-point")).to_be_visible()
        expect(viewer.get_by_test_id("toolbar-extend")).to_be_hidden()
    for page in (alice, bob, carol):
        page.get_by_test_id("toolbar-close").click()
        expect(toolbar(page)).to_be_hidden()

    # it closes by itself 5 s after opening if the pointer never enters it
    pause(bob)
    bob.mouse.move(5, 5)
    bob.get_by_test_id("toolbar-handle").click()
    bob.mouse.move(5, 5)
    bob.clock.run_for(4900)
    expect(toolbar(bob)).to_be_visible()
    bob.clock.run_for(200)
    expect(toolbar(bob)).to_be_hidden()
    # ...and stays open once the pointer has been inside, until Close
    bob.get_by_test_id("toolbar-handle").click()
    bob.get_by_test_id("toolbar-asset").hover()
    bob.clock.run_for(10_000)
    expect(toolbar(bob)).to_be_visible()
    bob.get_by_test_id("toolbar-close").click()
    expect(toolbar(bob)).to_be_hidden()
    bob.clock.resume()

    # Session URL copies the share link, which opens the join dialog for another user
    open_toolbar(carol)
    carol.get_by_test_id("toolbar-url").click()
    expect(carol.get_by_test_id("toolbar-status")).to_contain_text("copied")
    copied = carol.evaluate("() => navigator.clipboard.readText()")
    assert copied == carol.evaluate("() => cosession.shareUrl")  # the link the gateway gave carol
    assert copied.split("?share=")[0] == link.split("?share=")[0] == site.gateway.url(f"/sessions/{sid}")
    dave = site.signed_in("dave")
    dave.goto(copied)
    expect(dave.get_by_test_id("join-dialog")).to_be_visible()
    carol.get_by_test_id("toolbar-close").click()

    # chat: everyone sees it with the name and the time, as text (never HTML)
    open_toolbar(bob)
    bob.get_by_test_id("toolbar-chat").click()
    expect(bob.get_by_test_id("chat")).to_be_visible()
    bob.get_by_test_id("chat-text").fill(HOSTILE)
    bob.get_by_test_id("chat-send").click()
    for page in (alice, bob, carol):
        entry = page.get_by_test_id("chat-log").locator("li").last
        expect(entry.locator(".chat-who")).to_have_text("bob")
        expect(entry.locator(".chat-text")).to_have_text(HOSTILE)
        expect(entry.locator("time")).to_have_text(re.compile(r"\d\d:\d\d"))
        assert page.evaluate("() => window.pwned") is None
        expect(page.get_by_test_id("chat-log").locator("img")).to_have_count(0)
    expect(alice.get_by_test_id("chat-unread")).to_have_text("1")  # alice's panel was closed
    site.gateway.engine.flush_audit()
    rows, _ = site.gateway.services.audit_reader.events(kind="chat")
    assert [(r["actor_name"], r["detail"]["text"]) for r in rows] == [("bob", HOSTILE)]

    # the pointer: carol points at a cell; everyone sees the same cell with her name
    run(alice, "clear; echo pointer-target", "pointer-target")
    for page in (alice, carol):  # the screen as it stays: the output on its first row
        page.wait_for_function(f"() => ({SCREEN})().startsWith('pointer-target')")
    for page in (alice, bob, carol):
        pause(page)  # the markers stay until the clock is run: however slow this machine is
    open_toolbar(carol)
    carol.get_by_test_id("toolbar-point").click()
    screen = carol.locator("#terminal .xterm-screen").bounding_box()
    cols, rows_ = carol.evaluate("() => [cosessionTerminal.cols, cosessionTerminal.rows]")
    cell_w, cell_h = screen["width"] / cols, screen["height"] / rows_
    expect(carol.get_by_test_id("point-layer")).to_be_visible()
    carol.mouse.click(screen["x"] + cell_w * 5.5, screen["y"] + cell_h * 1.5)
    for page in (alice, bob, carol):
        marker = page.get_by_test_id("pointer")
        expect(marker).to_have_count(1)
        expect(marker).to_have_attribute("data-col", "5")
        expect(marker).to_have_attribute("data-row", "1")
        expect(marker).to_have_text("carol")
    open_toolbar(alice)
    alice.get_by_test_id("toolbar-chat").click()
    alice.get_by_test_id("toolbar-asset").hover()
    save_screenshot(alice, "session-toolbar.png")
    # the pointer was not input: the shell's screen did not change
    assert alice.evaluate(SCREEN).startswith("pointer-target\n")
    # shown for a few seconds
    alice.clock.run_for(3900)
    expect(alice.get_by_test_id("pointer")).to_have_count(1)
    alice.clock.run_for(200)
    expect(alice.get_by_test_id("pointer")).to_have_count(0)
    for page in (alice, bob, carol):
        page.clock.resume()

    # Paste clipboard (the controller's only): refused with the reason while the profile forbids
    # clipboard upload, into the shell as a bracketed paste once a profile allows it
    expect(bob.get_by_test_id("toolbar-paste")).to_be_hidden()
    alice.evaluate("(text) => navigator.clipboard.writeText(text)", "echo pasted-$((6*7))")
    open_toolbar(alice)
    alice.get_by_test_id("toolbar-paste").click()
    expect(alice.get_by_test_id("toolbar-status")).to_have_text(
        "Not pasted: Your access profile does not allow clipboard upload.")
    services = site.gateway.services
    upload = services.profiles.create_profile("Upload", "allow", clipboard_upload=True)
    alice_user = services.users.get_by_name("alice")
    services.grants.grant(site.endpoint.id, alice_user.id, "user", upload.id)
    alice.get_by_test_id("toolbar-paste").click()
    expect(alice.get_by_test_id("toolbar-status")).to_have_text(re.compile(r"Pasted \d+ bytes"))
    alice.locator(".xterm-helper-textarea").focus()
    alice.keyboard.press("Enter")
    wait_for_text(carol, "pasted-42")
    site.gateway.engine.flush_audit()
    assert [r["detail"]["reason"] for r in services.audit_reader.events(kind="message_refused")[0]
            if r["detail"]["message"] == "paste"] == ["clipboard_not_allowed"]
    assert len(services.audit_reader.events(kind="clipboard_upload")[0]) == 1

    # Keyboard: the on-screen keyboard types into the shell as the controller (shift included)
    open_toolbar(alice)
    alice.get_by_test_id("toolbar-keyboard").click()
    expect(alice.get_by_test_id("toolbar-keyboard")).to_have_text("Hide Keyboard")
    keys = alice.get_by_test_id("osk")
    for key in ["e", "c", "h", "o", "{space}", "d", "b", "k", "{space}", "{shift}", "|", "{space}", "r", "e", "v",
                "{enter}"]:
        keys.locator(f'[data-skbtn="{key}"]').first.click()
    wait_for_text(carol, "kbd")
    alice.get_by_test_id("osk-layout").select_option("french")
    expect(keys.locator('[data-skbtn="ù"]')).to_have_count(1)
    alice.get_by_test_id("toolbar-keyboard").click()
    expect(keys).to_be_hidden()

    # a viewer's Leave leaves; the controller's Disconnect ends the session for everyone
    open_toolbar(bob)
    bob.get_by_test_id("toolbar-disconnect").click()
    expect(alice.get_by_test_id("viewer-count")).to_have_text("1")
    expect(bob.get_by_test_id("toolbar-handle")).to_be_hidden()
    expect(alice.get_by_test_id("state")).to_have_text("active")  # a viewer's leave ends nothing
    open_toolbar(alice)
    alice.once("dialog", lambda dialog: dialog.accept())
    alice.get_by_test_id("toolbar-disconnect").click()
    for page in (alice, carol):
        expect(page.get_by_test_id("state")).to_have_text("ended")
        expect(page.get_by_test_id("notice")).to_have_attribute("data-reason", "controller_left")
        expect(page.get_by_test_id("toolbar-handle")).to_be_hidden()
    site.gateway.engine.flush_audit()
    ended, _ = site.gateway.services.audit_reader.events(kind="session_ended")
    assert [r["detail"].get("reason") for r in ended if r["session_id"] == sid] == ["controller_left"]


def test_files_uploads_with_progress_downloads_and_deletes_over_sftp(site, tmp_path):
    services = site.gateway.services
    alice = site.user("alice", grant=False)
    files = services.profiles.create_profile("Files", "allow", file_transfer=True)
    services.grants.grant(site.endpoint.id, alice.id, "user", files.id)
    page = site.signed_in("alice")
    sid = site.start(page)
    folder = f"cosession-files-{secrets.token_hex(4)}"
    try:
        open_toolbar(page)
        page.get_by_test_id("toolbar-files").click()
        panel = page.get_by_test_id("files")
        expect(panel).to_be_visible()
        page.once("dialog", lambda dialog: dialog.accept(folder))
        page.get_by_test_id("files-mkdir").click()
        page.get_by_test_id("files-list").get_by_role("button", name=f"{folder}/").click()
        expect(page.get_by_test_id("files-path")).to_contain_text(folder)

        data = os.urandom(700 * 1024)  # four chunks: the progress moves
        digest = hashlib.sha256(data).hexdigest()
        page.evaluate("""() => {
          const seen = (window.progressSeen = []);
          const bar = document.getElementById('files-progress');
          const set = Object.getOwnPropertyDescriptor(HTMLProgressElement.prototype, 'value').set;
          Object.defineProperty(bar, 'value', { set(v) { seen.push(v); set.call(bar, v); },
            get() { return Number(bar.getAttribute('value')) || 0; } });
        }""")
        page.get_by_test_id("files-upload").set_input_files(
            files=[{"name": "tool.bin", "mimeType": "application/octet-stream", "buffer": data}])
        expect(page.get_by_test_id("files-status")).to_contain_text(f"Uploaded tool.bin (700.0 KiB, SHA-256 {digest})")
        steps = [v for v in page.evaluate("() => window.progressSeen") if v > 0]
        assert len(steps) >= 4 and steps == sorted(steps) and steps[-1] == 1, steps
        on_server = site.openssh.home / folder / "tool.bin"
        assert hashlib.sha256(on_server.read_bytes()).hexdigest() == digest

        row = page.get_by_test_id("files-list").locator("li", has_text="tool.bin")
        with page.expect_download() as downloading:
            row.get_by_test_id("file-download").click()
        saved = tmp_path / "tool.bin"
        downloading.value.save_as(saved)
        assert saved.read_bytes() == data

        page.once("dialog", lambda dialog: dialog.accept())
        row.get_by_role("button", name="Delete tool.bin").click()
        expect(page.get_by_test_id("files-status")).to_contain_text(f"Deleted {folder}/tool.bin")
        expect(page.get_by_test_id("files-empty")).to_be_visible()  # the listing that follows says so
        expect(page.get_by_test_id("files-status")).to_contain_text(f"Deleted {folder}/tool.bin")  # and keeps it
        assert not on_server.exists()

        # Send Tool: the library's tool into the home folder
        tool_name = f"{folder}-tool.sh"
        tool = services.tools.add("Hello tool", tool_name, b"#!/bin/sh\necho hello\n", "", "root", 0.0)
        page.get_by_test_id("files-close").click()
        open_toolbar(page)
        page.get_by_test_id("toolbar-send-tool").click()
        expect(page.get_by_test_id("tool-choice")).to_contain_text(f"Hello tool ({tool_name}")
        page.get_by_test_id("tool-send-button").click()
        expect(page.get_by_test_id("files-status")).to_have_text(
            f"Sent {tool_name} to your home folder (SHA-256 {tool.sha256}).")
        assert (site.openssh.home / tool_name).read_bytes() == b"#!/bin/sh\necho hello\n"
        expect(page.get_by_test_id("files-list").locator(f"li[data-name='{tool_name}']")).to_have_count(1)

        site.gateway.engine.flush_audit()
        audit = services.audit_reader
        assert [(r["detail"]["path"], r["detail"]["size"], r["detail"]["sha256"])
                for r in audit.events(kind="file_upload")[0]] == [(f"{folder}/tool.bin", len(data), digest)]
        assert [(r["detail"]["size"], r["detail"]["sha256"]) for r in audit.events(kind="file_download")[0]] == [
            (len(data), digest)]
        assert all(r["session_id"] == sid for r in audit.events(kind="file_upload")[0])
        assert [r["detail"]["sha256"] for r in audit.events(kind="tool_sent")[0]] == [tool.sha256]
    finally:
        shutil.rmtree(site.openssh.home / folder, ignore_errors=True)
        (site.openssh.home / f"{folder}-tool.sh").unlink(missing_ok=True)
