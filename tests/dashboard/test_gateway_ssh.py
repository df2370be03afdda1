"""The gateway's SSH sessions against a real OpenSSH server: credentials entered or stored, host
keys trusted on first use, a changed key refused and kept for an administrator."""

from __future__ import annotations

import json

import asyncssh
import pytest
import trio

from tests.fixtures.websockets import Harness

pytestmark = pytest.mark.openssh


async def start(h: Harness, name: str, endpoint, credentials=None):
    fields = {} if credentials is None else {"credentials": credentials}
    return await h.start(name, 100, 30, endpoint=endpoint, **fields)


async def until(predicate, deadline: float = 10) -> None:
    with trio.fail_after(deadline):
        while not predicate():
            await trio.sleep(0.01)  # a poll interval: the write happens in a worker thread


async def test_entered_credentials_and_the_first_host_key_is_trusted(harness, openssh):
    h = harness
    h.user("alice", grant=False)
    endpoint = h.openssh_endpoint(openssh)
    h.gateway.grant(endpoint, "alice")
    client, joined = await start(h, "alice", endpoint, {"username": openssh.username, "password": openssh.password})
    await client.control("state", state="active")
    await client.send(b"echo ssh-$((20+3))\r")
    await client.output_contains(b"ssh-23")
    await until(lambda: h.gateway.services.endpoints.get(endpoint.id).host_key is not None)
    assert h.gateway.services.endpoints.get(endpoint.id).host_key.split()[:2] == openssh.host_key.split()[:2]
    rows = await h.audit("credential_use")
    assert rows[-1]["detail"] == {"endpoint": endpoint.id, "source": "entered", "username": openssh.username}
    assert openssh.password not in json.dumps(await h.audit(None))  # every row of the audit log


async def test_stored_private_key(harness, openssh):
    h = harness
    h.user("alice", grant=False)
    endpoint = h.openssh_endpoint(openssh, private_key=openssh.private_key, host_key=openssh.host_key)
    h.gateway.grant(endpoint, "alice")
    client, joined = await start(h, "alice", endpoint)
    await client.control("state", state="active")
    await client.send(b"echo key-$((40+4))\r")
    await client.output_contains(b"key-44")
    assert (await h.audit("credential_use"))[-1]["detail"]["source"] == "stored"


async def test_a_changed_host_key_refuses_the_connection_and_is_kept_for_an_administrator(harness, openssh):
    h = harness
    h.user("alice", grant=False)
    impostor = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode().strip()
    endpoint = h.openssh_endpoint(openssh, password=openssh.password, host_key=impostor)
    h.gateway.grant(endpoint, "alice")
    client, joined = await start(h, "alice", endpoint)
    ended = await client.control("ended")
    assert ended["reason"] == "endpoint_failed" and "host key" in ended["detail"] and "changed" in ended["detail"]
    await until(lambda: h.gateway.services.endpoints.get(endpoint.id).pending_host_key is not None)
    record = h.gateway.services.endpoints.get(endpoint.id)
    assert record.pending_host_key.split()[:2] == openssh.host_key.split()[:2]
    assert record.host_key.split()[:2] == impostor.split()[:2]  # unchanged until an administrator accepts


async def test_wrong_credentials_end_the_session_with_the_reason(harness, openssh):
    h = harness
    h.user("alice", grant=False)
    endpoint = h.openssh_endpoint(openssh, host_key=openssh.host_key)
    h.gateway.grant(endpoint, "alice")
    client, joined = await start(h, "alice", endpoint, {"username": openssh.username, "password": "not-it"})
    ended = await client.control("ended")
    assert ended["reason"] == "endpoint_failed" and "authentication failed" in ended["detail"]
    assert "not-it" not in json.dumps(client.controls)


async def test_an_ssh_endpoint_without_stored_credentials_needs_them(harness, openssh):
    h = harness
    h.user("alice", grant=False)
    endpoint = h.openssh_endpoint(openssh, host_key=openssh.host_key)
    h.gateway.grant(endpoint, "alice")
    client = await h.open("alice", f"/ws/endpoints/{endpoint.id}/start")
    await client.send({"type": "start", "cols": 80, "rows": 24})
    refusal = await client.control("refused")
    assert refusal["reason"] == "credentials_required" and refusal["fatal"]
