"""The bus between nodes (protocols/bus.py) against a real nats-server, from trio: publish and
subscribe, a batch in order, request and answer, no answer, a reader that falls behind, and a
server that goes away and comes back."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import nkeys
import pytest
import trio

from protocols.bus import BusError, BusTimeout, open_bus, shown
from tests.fixtures.nats import PASSWORD, TOKEN, USER
from tests.fixtures.tls import make_certificate

pytestmark = pytest.mark.nats

DEADLINE = 10  # seconds: a bound on waiting for the server, never a wait for time


async def test_a_published_message_reaches_a_subscriber_as_bytes(nats_server):
    async with open_bus(nats_server.url) as bus:
        assert bus.connected
        sub = await bus.subscribe("session.s1.frames")
        await bus.publish("session.s1.frames", b"\x00\xffframe")
        with trio.fail_after(DEADLINE):
            message = await sub.__anext__()
        assert (message.subject, message.payload) == ("session.s1.frames", b"\x00\xffframe")
        await sub.unsubscribe()


async def test_a_batch_crosses_once_and_arrives_in_order_on_a_wildcard(nats_server):
    async with open_bus(nats_server.url, name="reader") as reader, open_bus(nats_server.url, name="writer") as writer:
        sub = await reader.subscribe("session.*.frames")
        await reader.flush()  # the subscription is on the server before anything is published
        batch = [(f"session.s{n % 3}.frames", b"%05d" % n) for n in range(1000)]
        await writer.publish_batch(batch)
        received = []
        with trio.fail_after(DEADLINE):
            async for message in sub:
                received.append((message.subject, message.payload))
                if len(received) == len(batch):
                    break
        assert received == batch
        assert sub.dropped == 0


async def test_a_request_gets_its_answer_and_an_unanswered_one_a_timeout(nats_server):
    async with open_bus(nats_server.url) as bus, trio.open_nursery() as nursery:
        sub = await bus.subscribe("node.a.join")

        async def answer() -> None:
            async for message in sub:
                await message.respond(b"joined:" + message.payload)

        nursery.start_soon(answer)
        reply = await bus.request("node.a.join", b"bob", timeout=DEADLINE)
        assert reply.payload == b"joined:bob"
        with pytest.raises(BusTimeout, match="no answer on node.b.join"):
            await bus.request("node.b.join", b"bob", timeout=0.5)  # nobody subscribes: at once
        await sub.unsubscribe()


async def test_a_reader_that_falls_behind_loses_the_newest_and_slows_no_one(nats_server):
    async with open_bus(nats_server.url) as bus:
        slow = await bus.subscribe("frames", queue_size=10)
        fast = await bus.subscribe("frames")
        await bus.publish_batch([("frames", b"%d" % n) for n in range(100)])
        await bus.flush()
        with trio.fail_after(DEADLINE):
            got = [(await fast.__anext__()).payload for _ in range(100)]
            while slow.dropped < 90:  # the client hands messages over as they arrive
                await trio.sleep(0.01)
        assert got == [b"%d" % n for n in range(100)]
        kept = [(await slow.__anext__()).payload for _ in range(10)]
        assert kept == [b"%d" % n for n in range(10)] and slow.dropped == 90


async def test_the_bus_reconnects_and_its_subscriptions_go_on(nats_server, caplog):
    caplog.set_level(logging.INFO, logger="protocols.bus")

    def disconnections() -> int:
        return caplog.text.count("disconnected; reconnecting")

    async with open_bus(nats_server.url) as bus:
        sub = await bus.subscribe("control")
        await bus.flush()
        await trio.to_thread.run_sync(nats_server.stop)
        with trio.fail_after(DEADLINE):
            while bus.connected:
                await trio.sleep(0.01)
        await trio.to_thread.run_sync(nats_server.start)
        with trio.fail_after(DEADLINE):
            while not bus.connected:
                await trio.sleep(0.01)
        await bus.publish("control", b"after")
        with trio.fail_after(DEADLINE):
            message = await sub.__anext__()
        assert message.payload == b"after"
        assert disconnections() == 1 and "reconnected" in caplog.text
    assert disconnections() == 1  # the node's own close is not a disconnection


async def test_no_server_is_a_clear_error(nats_server):
    nats_server.stop()
    with pytest.raises(BusError, match=rf"cannot connect to {re.escape(nats_server.url)}: .*Connect call failed"):
        async with open_bus(nats_server.url):
            pass


# --- NATS's authentication and TLS: the server decides, and no credential is ever written out ---


async def _round_trip(bus) -> bytes:
    sub = await bus.subscribe("auth.check")
    await bus.publish("auth.check", b"ok")
    with trio.fail_after(DEADLINE):
        message = await sub.__anext__()
    await sub.unsubscribe()
    return message.payload


async def test_a_user_and_password_in_the_url_sign_in_and_a_wrong_one_is_refused_unsaid(
        nats_server_with_password, caplog):
    server = nats_server_with_password
    async with open_bus(server.url_with(f"{USER}:{PASSWORD}")) as bus:
        assert await _round_trip(bus) == b"ok"
    for url in (server.url_with(f"{USER}:not-{PASSWORD}"), server.url):  # a wrong password, none at all
        with pytest.raises(BusError) as refused:
            async with open_bus(url):
                pass
        assert str(refused.value).startswith(f"cannot connect to {shown(url)}: authorization violation")
    assert shown(server.url_with(f"{USER}:not-{PASSWORD}")) == f"nats://{USER}:***@127.0.0.1:{server.port}"
    assert PASSWORD not in caplog.text and "***" in caplog.text  # the log names the server, hidden


async def test_a_token_signs_in_from_the_url_or_apart_and_a_wrong_one_is_refused_unsaid(nats_server_with_token, caplog):
    server = nats_server_with_token
    async with open_bus(server.url_with(TOKEN)) as bus:
        assert await _round_trip(bus) == b"ok"
    async with open_bus(server.url, token=TOKEN) as bus:
        assert await _round_trip(bus) == b"ok"
    for url, token in ((server.url_with(f"not-{TOKEN}"), ""), (server.url, f"not-{TOKEN}")):
        with pytest.raises(BusError, match="authorization violation") as refused:
            async with open_bus(url, token=token):
                pass
        assert TOKEN not in str(refused.value)
    assert shown(server.url_with(TOKEN)) == f"nats://***@127.0.0.1:{server.port}"
    assert TOKEN not in caplog.text


async def test_tls_with_the_servers_ca_and_a_refusal_without_it(start_nats_server, nats_server, tmp_path):
    certificate = make_certificate(tmp_path)
    server = start_nats_server("--tls", "--tlscert", str(certificate.certfile), "--tlskey", str(certificate.keyfile))
    url = f"tls://127.0.0.1:{server.port}"
    async with open_bus(url, ca_file=str(certificate.certfile)) as bus:
        assert await _round_trip(bus) == b"ok"
    with pytest.raises(BusError, match="certificate verify failed"):  # the system's CAs do not know it
        async with open_bus(url):
            pass
    # a tls:// URL to a server without TLS: refused, rather than carrying the sessions in clear
    with pytest.raises(BusError, match="the server does not use TLS"):
        async with open_bus(f"tls://127.0.0.1:{nats_server.port}", ca_file=str(certificate.certfile)):
            pass


async def test_an_nkey_seed_file_signs_in_and_another_users_is_refused(nats_server_with_nkey, tmp_path, caplog):
    server = nats_server_with_nkey
    async with open_bus(server.url, credentials_file=server.credentials) as bus:
        assert await _round_trip(bus) == b"ok"
    stranger = tmp_path / "stranger.nk"
    stranger.write_bytes(bytes(nkeys.from_seed(bytearray(nkeys.encode_seed(
        b"\x07" * 32, nkeys.PREFIX_BYTE_USER))).seed) + b"\n")
    for credentials in (str(stranger), ""):
        with pytest.raises(BusError, match="authorization violation"):
            async with open_bus(server.url, credentials_file=credentials):
                pass
    seed = Path(server.credentials).read_text().strip()
    assert seed not in caplog.text


async def test_a_creds_file_signs_in_to_a_server_in_operator_mode(nats_server_in_operator_mode, caplog):
    server = nats_server_in_operator_mode
    async with open_bus(server.url, credentials_file=server.credentials) as bus:
        assert await _round_trip(bus) == b"ok"
    with pytest.raises(BusError, match="authorization violation"):  # no credentials: refused
        async with open_bus(server.url):
            pass
    seed = Path(server.credentials).read_text().split("-----BEGIN USER NKEY SEED-----")[1].split()[0]
    assert seed.startswith("SU") and seed not in caplog.text


ACCOUNT_SEED = nkeys.encode_seed(b"\x01" * 32, nkeys.PREFIX_BYTE_ACCOUNT)


@pytest.mark.parametrize("content, says", [
    (None, "cannot read the bus's credentials file .*: No such file or directory"),
    (b"\xff\xfe binary", "cannot read the bus's credentials file .*: not a text file"),
    (b"SUnotaseed\n", "is neither a NATS .creds file .* nor a user's NKey seed"),
    (b"-----BEGIN NATS USER JWT-----\neyJ0eXAi.e30.sig\n------END NATS USER JWT------\n",
     "is neither a NATS .creds file"),  # a JWT without its seed: nats-py would read it for ever
    (ACCOUNT_SEED + b"\n", "nor a user's NKey seed"),  # a real seed, but an account's
])
async def test_a_credentials_file_that_cannot_serve_is_a_clear_error_before_any_connection(
        nats_server, tmp_path, content, says):
    path = tmp_path / "bad.creds"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(BusError, match=says) as refused:
        async with open_bus(nats_server.url, credentials_file=str(path)):
            pass
    assert ACCOUNT_SEED.decode() not in str(refused.value)
