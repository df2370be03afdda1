"""A recorded SSH session through the real gateway against real OpenSSH (issue 12): a controller
whose profile says Record, a viewer who joins and leaves, Send Password (its value typed at a
silent prompt), an administrator's terminate. The recording is valid asciicast v2 as asciinema's
own reader reads it, replays (pyte) to the controller's last screen, carries the session's audit
rows as its markers, holds the password nowhere, and its size and SHA-256 are in the audit
chain; every participant was told that the session is recorded."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pyte
import pytest
import sqlalchemy as sa
import trio

from engine.recordings import marker_label
from tests.dashboard.test_api_sessions import call
from tests.dashboard.test_send_password import (
    DEADLINE, PASSWORD, contains_secret, send_password, start, vault,
)

pytestmark = pytest.mark.openssh

COLS, ROWS = 100, 30


@pytest.fixture(params=[False, True], ids=["default", "record-input"])
def gateway_overrides(request):
    return {"recordings": {"record_input": request.param}}


def screen_of(chunks, resizes=()) -> list[str]:
    screen = pyte.Screen(COLS, ROWS)
    stream = pyte.Stream(screen)
    for chunk in chunks:
        if isinstance(chunk, tuple):
            screen.resize(chunk[1], chunk[0])
        else:
            stream.feed(chunk)
    return screen.display


def asciinema_events(path) -> tuple[dict, list[list]]:
    """The recording as asciinema 2.4's own asciicast v2 reader reads it."""
    from asciinema.asciicast import v2

    with open(path, encoding="utf-8") as f, v2.open_from_file(f.readline(), f) as cast:
        return cast.v2_header, list(cast.events())


async def test_a_recorded_ssh_session_replays_to_the_controllers_screen(harness, openssh):
    h = harness
    services = h.gateway.services
    endpoint = vault(h, openssh)
    recorded = services.profiles.create_profile("Recorded", "record", clipboard_upload=True)
    watching = services.profiles.create_profile("Watch", "allow")
    carol = h.gateway.create_user("carol", PASSWORD)
    services.grants.grant(endpoint.id, carol.id, "owner", recorded.id)
    bob = h.gateway.create_user("bob", PASSWORD)
    services.grants.grant(endpoint.id, bob.id, "viewer", watching.id)
    h.gateway.create_user("root", PASSWORD, admin=True)

    controller, joined = await start(h, "carol", endpoint)
    sid = joined["session_id"]
    assert joined["recorded"] is True  # the controller's page says so

    viewer = await h.open("bob", f"/ws/sessions/{sid}")
    await viewer.send({"type": "join"})
    seen = await viewer.control("joined", deadline=DEADLINE)
    assert seen["recorded"] is True and seen["role"] == "viewer"  # and the viewer's
    await controller.send(b"printf 'seen by \\x62ob\\n'\r")
    await viewer.output_contains(b"seen by bob", deadline=DEADLINE)
    await viewer.send({"type": "leave"})
    await controller.control("participant_left", deadline=DEADLINE)

    # Send Password: the value reaches the controller alone, who pastes it at a silent prompt
    answer = await send_password(controller)
    assert answer == {"type": "password", "password": openssh.password}
    await controller.send(b"read -rs -p 'secret: ' typed; echo; echo length-${#typed}\r")
    await controller.output_contains(b"secret: ", deadline=DEADLINE)
    await controller.send(openssh.password.encode() + b"\r")
    await controller.output_contains(b"length-%d" % len(openssh.password), deadline=DEADLINE)
    await controller.send(b"printf '\\033[2J\\033[H\\033[1mlast\\033[0m screen %s\\n' $((6*7)); tput cup 10 20; "
                          b"printf here\r")
    await controller.output_contains(b"here", deadline=DEADLINE)
    await controller.output_contains(b"last\x1b[0m screen 42", deadline=DEADLINE)

    root = h.gateway.api_session("root", PASSWORD)
    assert (await call(root, "POST", f"/api/sessions/{sid}/terminate")).status_code == 200
    ended = await controller.control("ended", deadline=DEADLINE)
    assert ended["reason"] == "terminated"

    def closed_row():
        rows = [r for r in services.audit_reader.events(kind="recording_closed", limit=10)[0]
                if r["session_id"] == sid]
        return rows[0] if rows else None

    with trio.fail_after(DEADLINE):
        while (await trio.to_thread.run_sync(lambda: (h.gateway.engine.flush_audit(), closed_row())[1])) is None:
            await trio.sleep(0.05)
    row = await trio.to_thread.run_sync(closed_row)
    path = h.gateway.settings.recordings_path / f"{sid}.cast"
    data = path.read_bytes()

    # the audit chain holds exactly this file
    assert row["detail"]["file"] == path.name and row["detail"]["complete"] is True
    assert row["detail"]["bytes"] == len(data) and row["detail"]["sha256"] == hashlib.sha256(data).hexdigest()

    # valid asciicast v2, read by asciinema itself (its library and its `cat` command)
    header, events = asciinema_events(path)
    assert header["version"] == 2 and (header["width"], header["height"]) == (COLS, ROWS)
    typed = "".join(e[2] for e in events if e[1] == "i")
    if h.gateway.settings.recordings.record_input:  # the keystrokes, but never the pasted password
        assert "read -rs -p 'secret: ' typed" in typed and "length-" in typed
    else:
        assert {e[1] for e in events} <= {"o", "m", "r"} and not typed  # keystrokes are not recorded by default
    cat = subprocess.run([sys.executable, "-m", "asciinema", "cat", str(path)], capture_output=True, timeout=60)
    assert cat.returncode == 0, cat.stderr
    output = "".join(e[2] for e in events if e[1] == "o")
    assert cat.stdout.decode() == output

    # its screen at the end is the controller's last screen
    chunks = [e[2] if e[1] == "o" else tuple(map(int, e[2].split("x"))) for e in events if e[1] in ("o", "r")]
    replayed = screen_of(chunks)
    assert replayed == screen_of([controller.output.decode("utf-8", "replace")])
    assert any("last screen 42" in line for line in replayed) and replayed[10][20:24] == "here"

    # its markers are the session's audit rows, at their times
    started = header["cosession"]["started_at"]
    with sa.create_engine(h.gateway.settings.database_url).connect() as db:
        rows = db.execute(sa.text("select kind, at, actor_name, detail from audit_events where session_id = :s "
                                  "order by id"), {"s": sid}).all()
    expected = []
    for kind, at, actor, detail in rows:
        label = marker_label(kind, actor, json.loads(detail) if detail else {})
        if label is not None:
            expected.append((at - started, label))
    markers = [(e[0], e[2]) for e in events if e[1] == "m"]
    assert [label for _, label in markers] == [label for _, label in expected]
    assert all(abs(t - u) < 0.002 for (t, _), (u, _) in zip(markers, expected)), (markers, expected)
    labels = [label for _, label in markers]
    for wanted in ("bob joined as viewer", "bob left", "carol used Send Password", "terminated by root",
                   "session ended (terminated)"):
        assert wanted in labels, labels

    # the password is nowhere in it, in any form
    assert not contains_secret(data, openssh.password)
    assert not contains_secret(json.dumps(row), openssh.password)
