"""`cosession loadtest --via websocket`: the engine load test's workload and report, through real
websockets (an in-process gateway, or a running one with --url)."""

from __future__ import annotations

import json

import pytest
import trio

from config.settings import load
from cosession import cli
from cosession.loadtest import REPORT_KEYS, Options
from cosession.loadtest_ws import BARRIER, INPUT, WsParticipant, run_websocket_loadtest
from engine.messages import EndpointProtocol
from protocols.synthetic import stamp, stamps


def test_the_websocket_load_test_counts_everything_where_it_happens(tmp_path):
    options = Options(sessions=2, viewers=11, rate=20.0, frame_bytes=200, input_rate=4.0, duration=1.0)
    report = run_websocket_loadtest(options, load(env={}, server={"data_dir": str(tmp_path)}))
    assert report.errors == []
    assert set(report.as_json()) == set(REPORT_KEYS)
    assert report.sessions_started == 2
    assert report.viewers_joined == 20 and report.joins_refused == {"viewer_cap": 2}
    # every controller input reached its endpoint (its own count), every viewer input was refused
    assert report.inputs_forwarded == report.controller_inputs_sent > 2
    assert report.inputs_refused == report.viewer_inputs_sent > 0
    # no queue overflowed: every participant got every frame
    assert report.frames_dropped == 0
    assert report.frames_delivered == report.frames_generated * 11
    assert report.frames_generated >= 2 * 10  # ~20 frames/s for 1 s per session, and the echoes
    assert 0 < report.fanout_latency_ms["p50"] <= report.fanout_latency_ms["p99"] <= report.fanout_latency_ms["max"]
    assert report.threads_after_stop == report.threads_at_start


@pytest.mark.parametrize("in_step", [False, True])
def test_the_streams_start_at_their_own_phases_unless_in_step(tmp_path, monkeypatch, in_step):
    # as the engine's load test: independent sessions print at independent moments, spread over
    # one frame period; --in-step sends every session's frame to every socket at once
    from cosession import loadtest_ws

    starts: list[float] = []
    original = loadtest_ws.send_json

    async def recording_send_json(socket, message):
        if message.get("type") == "stream" and message.get("rate"):
            starts.append(trio.current_time())
        await original(socket, message)

    monkeypatch.setattr(loadtest_ws, "send_json", recording_send_json)
    options = Options(sessions=4, viewers=1, rate=5.0, duration=0.5, in_step=in_step)
    report = run_websocket_loadtest(options, load(env={}, server={"data_dir": str(tmp_path)}))
    assert report.errors == [] and len(starts) == 4
    if not in_step:  # session n starts n/4 of a period (200 ms) after the first (10 ms: the first's own send)
        assert all(starts[n] - starts[0] >= n / 4 / 5.0 - 0.01 for n in range(4)), starts


def test_the_command_prints_the_same_json_report(capsys, tmp_path):
    code = cli.main(["loadtest", "--via", "websocket", "--json", "--sessions", "1", "--viewers", "2",
                     "--duration", "0.3", "--data-dir", str(tmp_path)])
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report["errors"]
    assert list(report) == list(REPORT_KEYS)
    assert report["viewers_joined"] == 2


@pytest.fixture
def loader(live_gateway, monkeypatch):
    """A running gateway's load-test account and synthetic endpoint, named in the environment
    as `--url` wants them."""
    endpoint = live_gateway.create_endpoint("load", EndpointProtocol.SYNTHETIC, host="")
    live_gateway.grant(endpoint, live_gateway.create_user("loader", "loader-password"))
    monkeypatch.setenv("COSESSION_LOADTEST_USER", "loader")
    monkeypatch.setenv("COSESSION_LOADTEST_PASSWORD", "loader-password")
    monkeypatch.setenv("COSESSION_LOADTEST_ENDPOINT", endpoint.id)
    return live_gateway


def test_a_running_gateway_by_url(loader):
    gw = loader
    report = run_websocket_loadtest(Options(sessions=2, viewers=3, rate=10, duration=0.5, input_rate=2),
                                    url=gw.base_url)
    assert report.errors == []
    assert report.sessions_started == 2 and report.viewers_joined == 6
    assert report.frames_delivered == report.frames_generated * 4


def test_several_nodes_by_url_each_participant_on_its_node(loader):
    """`--url A,B --viewers-on next`: controllers round the list, viewers on the next node. Two
    spellings of one gateway stand for two nodes (tests/cluster runs real ones): each
    participant's sign-in and websocket go to its node's URL."""
    urls = [loader.base_url, loader.base_url + "/"]
    report = run_websocket_loadtest(Options(sessions=2, viewers=2, rate=10, duration=0.3),
                                    url=" , ".join(urls), viewers_on="next")
    assert report.errors == []
    assert report.sessions_started == 2 and report.viewers_joined == 4
    assert report.frames_delivered == report.frames_generated * 3


def test_a_running_gateway_needs_an_account_and_an_endpoint(monkeypatch):
    for name in ("COSESSION_LOADTEST_USER", "COSESSION_LOADTEST_PASSWORD", "COSESSION_LOADTEST_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    report = run_websocket_loadtest(Options(sessions=1, viewers=0, duration=0.1), url="http://127.0.0.1:9")
    assert any("COSESSION_LOADTEST_USER" in e for e in report.errors)


@pytest.mark.parametrize("cut", [1, 5, 10, 20, 26, 27, 40])
def test_a_stamp_split_between_two_messages_is_counted_once(cut):
    frames = b"".join(stamp(1_700_000_000_000_000_000 + i) + b"body %d\r\n" % i for i in range(3)) + INPUT + BARRIER
    participant = WsParticipant("p", socket=None)
    participant._data(frames[:cut])
    participant._data(frames[cut:])
    assert participant.frames == len(stamps(frames)) == 3
    assert participant.echoes == 1 and participant.barriers == 1
