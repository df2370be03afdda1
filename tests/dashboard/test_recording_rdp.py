"""A recorded RDP session (issue 12): RDP reaches the gateway through the same display pipeline as
VNC (a private Xvnc running xfreerdp, docs/rdp.md), so its recording is the same RFB stream. Against
FreeRDP's shadow server: the recording's last moment, replayed from its nearest keyframe, is the
server's picture; its size and SHA-256 are in the audit chain."""

from __future__ import annotations

import hashlib

import pytest
import trio

from engine.messages import EndpointProtocol
from engine.recording_desktop import desktop_start, read_desktop
from engine.recordings import DESKTOP_FORMAT
from protocols.rfb_browser import FrameDecoder
from tests.dashboard.test_desktop_gateway import close_all
from tests.fixtures.desktops import rfb_participant
from tests.dashboard.test_rdp_gateway import converge, leave, no_rdp_process_left
from tests.fixtures.gateway import PASSWORD
from tests.protocols.test_rdp_freerdp import close_to

pytestmark = pytest.mark.rdp


@pytest.fixture
def gateway_overrides():
    return {"engine": {"endpoint_retries": 0}}


async def test_a_recorded_rdp_session_replays_to_the_servers_picture(live_gateway, rdp_server_nla):
    server = rdp_server_nla
    services = live_gateway.services
    windows = live_gateway.create_endpoint("windows", EndpointProtocol.RDP, server.host, server.port,
                                           username=server.username, password=server.password)
    recorded = services.profiles.create_profile("Recorded", "record")
    alice = live_gateway.create_user("alice", PASSWORD)
    services.grants.grant(windows.id, alice.id, "owner", recorded.id)
    async with trio.open_nursery() as nursery:
        controller = await rfb_participant(nursery, live_gateway, "alice", f"/ws/endpoints/{windows.id}/start",
                                       {"type": "start", "cols": 80, "rows": 24})
        joined = controller.of("joined")[0]
        assert joined["recorded"] is True
        session_id = joined["session_id"]
        await converge(controller, server)
        truth = await trio.to_thread.run_sync(server.screen)
        await leave(controller)
        await close_all(nursery, controller)
    with trio.fail_after(20):
        while (info := services.audit_reader.recording(session_id)) is None or info.state != "closed":
            await trio.sleep(0.05)  # the writer thread closes the file: poll the audit log for its row
    assert info.format == DESKTOP_FORMAT and info.complete is True
    path = live_gateway.settings.recordings_path / info.file
    data = path.read_bytes()
    assert info.bytes == len(data) and info.sha256 == hashlib.sha256(data).hexdigest()
    with open(path, "rb") as f:
        recording = read_desktop(f)
        assert recording.indexed and recording.keyframes
        start = desktop_start(f, recording, recording.duration)
    decoder = FrameDecoder()
    decoder.feed(start.catch_up)
    same, difference = close_to(decoder.framebuffer, truth)
    assert same, difference
    await no_rdp_process_left(live_gateway)
