"""`cosession join SHARE-URL`: a read-only viewer in a terminal, as a real subprocess against the
real gateway."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dashboard.security import share
from engine.messages import ParticipantJoined, EndpointProtocol, SessionState
from protocols.synthetic import SyntheticConnection
from tests.fixtures.gateway import PASSWORD


@pytest.fixture
def session(live_gateway):
    gw = live_gateway
    endpoint = gw.create_endpoint("synth", EndpointProtocol.SYNTHETIC, host="")
    for name in ("alice", "bob"):
        gw.grant(endpoint, gw.create_user(name, PASSWORD))
    gw.create_user("mallory", PASSWORD)
    alice = gw.services.users.get_by_name("alice")
    connection = SyntheticConnection(gw.engine.clock)
    controller = gw.engine.open_session(endpoint.spec, alice, connection=connection)
    # the connection opens when the endpoint actor gets to it: emit once it is open
    assert controller.sink.wait_for(lambda s: any(getattr(e, "state", None) == SessionState.ACTIVE
                                                  for e in s.events))
    connection.emit(b"before the join\r\n")
    assert controller.wait_for_output("before the join")
    return gw, controller, connection


def join(url: str, user: str, password: str = PASSWORD) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cosession.cli", "join", url, "--user", user, "--password-stdin"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(process: subprocess.Popen, stdin: bytes = b"") -> tuple[int, bytes, str]:
    out, err = process.communicate(stdin, timeout=30)
    return process.returncode, out, err.decode()


def test_join_watches_the_session_until_it_ends(session):
    gw, controller, connection = session
    url = share.share_url(gw.services, controller.session_id)
    process = join(url, "bob")
    process.stdin.write(PASSWORD.encode() + b"\n")
    process.stdin.flush()
    assert controller.sink.wait_for(lambda s: any(isinstance(e, ParticipantJoined) for e in s.events), 30)
    connection.emit(b"live \xe2\x9c\x93 output\r\n")
    assert controller.wait_for_output("live \u2713 output")
    controller.leave()
    code, out, err = finish(process)
    assert code == 0, err
    assert b"before the join" in out  # the keyframe: the screen as it was at the join
    assert "live \u2713 output".encode() in out  # then the live bytes, unchanged
    assert "joined synth as viewer (read-only); controller alice; 1/10 viewers" in err
    assert "session ended: controller_left by alice" in err


def test_join_refuses_a_forged_link(session):
    gw, controller, connection = session
    url = share.share_url(gw.services, controller.session_id)
    code, out, err = finish(join(url[:-4] + "AAAA", "bob"), PASSWORD.encode() + b"\n")
    assert code == 1 and "refused: invalid_share_link" in err and out == b""


def test_join_is_refused_without_access_to_the_endpoint(session):
    gw, controller, connection = session
    code, out, err = finish(join(share.share_url(gw.services, controller.session_id), "mallory"),
                            PASSWORD.encode() + b"\n")
    assert code == 1 and "refused: no_access" in err


def test_join_with_a_wrong_password(session):
    gw, controller, connection = session
    code, out, err = finish(join(share.share_url(gw.services, controller.session_id), "bob"), b"wrong\n")
    assert code == 1 and "sign-in as bob failed" in err and "wrong" not in err.replace("wrong name", "")


def test_join_needs_a_share_link():
    code, out, err = finish(join("not a url", "bob"), b"x\n")
    assert code == 2 and "share link" in err
