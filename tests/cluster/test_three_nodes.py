"""Three real `cosession serve` nodes on one PostgreSQL database and one NATS server that admits
only a user with a password (docs/cluster.md, "A session across nodes"): the controller of an
SSH session (a real OpenSSH server) on node A, viewers on B, A and C over real websockets. The
endpoint's output reaches all of them; the 11th viewer, on C, is refused `viewer_cap` by A; C's
live dashboard lists the session with its node; a viewer's input on B is refused and audited;
NATS stopped and started again under the session: it goes on, and the viewers get its output
again; the controller's websocket on A closes and it comes back on B: its typing and resize
reach the shell through A, the output and the size reach everyone, and its Files work through
B (upload, list, download, delete, audited); input forged on the bus, and a terminate that
makes alice an administrator, are refused and audited; terminate from B closes every socket on
A, B and C; `kill -9` of A under a second session ends it for its viewers on B and C with
`node_failed`; `cosession audit verify` passes on the shared chain afterwards. No node prints
the bus's password."""

from __future__ import annotations

import base64
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import trio

from cosession.join import connect_socket, login, origin_of
from dashboard.repositories import Repositories
from dashboard.security.secrets import Secrets
from engine.db import audit_events
from engine.messages import EndpointProtocol, Input, Reason, User
from protocols import session_bus as sb
from protocols.bus import open_bus
from tests.cluster.test_serve_postgres import _clean_env, _plain
from tests.dashboard.test_serve import ROOT, Served
from tests.fixtures.gateway import PASSWORD
from tests.fixtures.nats import PASSWORD as NATS_PASSWORD, USER as NATS_USER
from tests.fixtures.websockets import Client

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.openssh]

SECRET_KEY = "k" * 32
CREDENTIAL_KEY = bytes(range(32))
HEARTBEAT = 0.3  # seconds: a node not seen for three of them has failed
VIEWERS = [f"viewer{i}" for i in range(1, 12)]  # the 11th is one too many


def _node(tmp_path: Any, name: str, postgres_url: str, bus_url: str, bus_token: str = "") -> Served:
    config = tmp_path / f"{name}.toml"
    config.write_text(f'[engine]\nnode_id = "{name}"\nheartbeat_seconds = {HEARTBEAT}\nbus_token = "{bus_token}"\n'
                      f'[security]\nsecret_key = "{SECRET_KEY}"\n'
                      f'credential_key = "{base64.b64encode(CREDENTIAL_KEY).decode()}"\n')
    return Served(tmp_path / name, "--no-demo", "--config", str(config), "--database", _plain(postgres_url),
                  "--bus", bus_url, env={"COSESSION_LOG_LEVEL": "info"})


def _populate(postgres_url: str, openssh: Any) -> str:
    """Users, the SSH endpoint (its credential stored encrypted) and their grants, straight in
    the shared database. The endpoint's id."""
    repositories = Repositories.open(postgres_url, Secrets(SECRET_KEY, CREDENTIAL_KEY))
    try:
        endpoint = repositories.endpoints.create(
            "box", EndpointProtocol.SSH, openssh.host, openssh.port, username=openssh.username,
            password=openssh.password, joint_session=True, host_key=openssh.host_key)
        files = repositories.profiles.create_profile("Files", "allow", file_transfer=True)
        for name in ["alice", *VIEWERS]:
            user = repositories.users.create(name, PASSWORD)
            repositories.grants.grant(endpoint.id, user.id, "user", files.id if name == "alice" else None)
        repositories.users.create("root-admin", PASSWORD, is_admin=True)
        return endpoint.id
    finally:
        repositories.close()


def _audit_rows(postgres_url: str, kind: str) -> list[Any]:
    db = sa.create_engine(postgres_url)
    try:
        with db.connect() as conn:
            return conn.execute(sa.select(audit_events).where(audit_events.c.kind == kind)).all()
    finally:
        db.dispose()


def _terminate(base_url: str, session_id: str) -> httpx.Response:
    with httpx.Client(base_url=base_url, headers={"Origin": origin_of(base_url)}) as client:
        token = client.post("/api/login", json={"name": "root-admin", "password": PASSWORD}).json()["csrf_token"]
        return client.post(f"/api/sessions/{session_id}/terminate", headers={"x-csrf-token": token})


def _files_through(base_url: str, session_id: str, content: bytes) -> tuple[list[str], bytes]:
    """alice's Files on a node: upload (in chunks), list, download, delete."""
    with httpx.Client(base_url=base_url, headers={"Origin": origin_of(base_url)}, timeout=30) as client:
        token = client.post("/api/login", json={"name": "alice", "password": PASSWORD}).json()["csrf_token"]
        files, chunk = f"/sessions/{session_id}/files", 256 * 1024
        for offset in range(0, len(content), chunk):
            sent = client.post(f"{files}/upload", params={"path": "cluster-file.bin", "offset": offset,
                                                          "total": len(content)},
                               content=content[offset:offset + chunk], headers={"x-csrf-token": token})
            assert sent.status_code == 200, sent.text
        listed = client.get(files, params={"path": ""})
        assert listed.status_code == 200, listed.text
        downloaded = client.get(f"{files}/download", params={"path": "cluster-file.bin"})
        assert downloaded.status_code == 200, downloaded.text
        deleted = client.post(f"{files}/delete", params={"path": "cluster-file.bin"}, headers={"x-csrf-token": token})
        assert deleted.status_code == 200, deleted.text
        return [entry["name"] for entry in listed.json()["entries"]], downloaded.content


COOKIES: dict[str, str] = {}  # a sign-in on one node is good on every node (one secret key)


async def _sign_in(nodes: list[Served], names: list[str]) -> None:
    """Sign everyone in at once, spread over the nodes (a password check costs CPU)."""
    async with trio.open_nursery() as nursery:
        for index, name in enumerate(names):
            async def one(name: str = name, node: Served = nodes[index % len(nodes)]) -> None:
                COOKIES[name] = await trio.to_thread.run_sync(login, node.url, name, PASSWORD)
            nursery.start_soon(one)


def _live_row(base_url: str, session_id: str) -> str:
    """The row of a live session on a node's dashboard, as an administrator sees it ('' if none)."""
    with httpx.Client(base_url=base_url, headers={"Cookie": COOKIES["root-admin"]}) as client:
        page = client.get("/").text
    start = page.find(f'data-session-id="{session_id}"')
    return page[start:page.find("</tr>", start)] if start >= 0 else ""


def _api_sessions(base_url: str) -> list[dict[str, Any]]:
    with httpx.Client(base_url=base_url, headers={"Cookie": COOKIES["root-admin"]}) as client:
        answer = client.get("/api/sessions")
    assert answer.status_code == 200, answer.text
    return answer.json()["sessions"]


async def _open(nursery: trio.Nursery, node: Served, name: str, path: str) -> Client:
    return Client(await connect_socket(nursery, node.url, path, COOKIES[name]))


async def _join(nursery: trio.Nursery, node: Served, name: str, session_id: str) -> tuple[Client, dict[str, Any]]:
    client = await _open(nursery, node, name, f"/ws/sessions/{session_id}")
    await client.send({"type": "join"})
    answer = await client.until(lambda m: isinstance(m, dict) and m["type"] in ("joined", "refused"))
    return client, answer


async def test_a_joint_session_across_three_nodes(tmp_path, postgres_url, nats_server_with_password, openssh):
    nats_server = nats_server_with_password  # the nodes sign in to the bus (user and password in the URL)
    bus_url = nats_server.url_with(f"{NATS_USER}:{NATS_PASSWORD}")
    a = _node(tmp_path, "a", postgres_url, bus_url)
    nodes = [a]
    try:
        a.passwords()
        endpoint_id = await trio.to_thread.run_sync(_populate, postgres_url, openssh)
        named: dict[str, Served] = {}

        def start(name: str) -> None:
            named[name] = node = _node(tmp_path, name, postgres_url, bus_url)
            nodes.append(node)

        async with trio.open_nursery() as starting:  # B and C start side by side
            for name in ("b", "c"):
                starting.start_soon(trio.to_thread.run_sync, start, name)
        b, c = named["b"], named["c"]

        await _sign_in(nodes, ["alice", *VIEWERS, "root-admin"])
        async with trio.open_nursery() as nursery:
            controller = await _open(nursery, a, "alice", f"/ws/endpoints/{endpoint_id}/start")
            await controller.send({"type": "start", "cols": 100, "rows": 30})
            sid = (await controller.control("joined"))["session_id"]
            await controller.control("state", state="active")

            viewers = []
            for index, name in enumerate(VIEWERS[:10]):
                viewer, answer = await _join(nursery, b if index < 4 else a if index == 4 else c, name, sid)
                assert answer["type"] == "joined" and answer["role"] == "viewer", answer
                assert answer["controller"]["name"] == "alice" and answer["endpoint"]["name"] == "box"
                viewers.append(viewer)
            # presence is the owning node's: the last joiner sees all eleven participants
            assert len(answer["members"]) == 11

            # node C's dashboard lists the session that A runs, with its node and its viewers
            with trio.fail_after(10):
                while 'data-count="10"' not in (row := await trio.to_thread.run_sync(_live_row, c.url, sid)):
                    await trio.sleep(0.1)  # a bound on the announcement's arrival, not a wait for time
            assert "on a</span>" in row and "alice" in row
            # ... and so does its JSON API, with the node
            listed = await trio.to_thread.run_sync(_api_sessions, c.url)
            assert [(x["id"], x["node"], x["viewer_count"]) for x in listed] == [(sid, "a", 10)]
            assert (await trio.to_thread.run_sync(_api_sessions, a.url))[0]["node"] == "a"  # on its own node too

            # the 11th viewer, on C: refused by the cap, which A enforces
            extra, refused = await _join(nursery, c, VIEWERS[10], sid)
            assert refused["type"] == "refused" and refused["reason"] == "viewer_cap", refused
            await extra.until_closed()

            # the controller's command's output reaches every participant on every node
            await controller.send(b"echo cluster-$((6*7))\n")
            for participant in [controller, *viewers]:
                await participant.output_contains(b"cluster-42")

            # a viewer's input on B is refused there and audited (the chain is shared)
            await viewers[0].send(b"rm -rf /\n")
            refusal = await viewers[0].control("refused", reason="not_controller")
            assert refusal["of"] == "input"
            with trio.fail_after(10):
                while not await trio.to_thread.run_sync(_audit_rows, postgres_url, "input_refused"):
                    await trio.sleep(0.05)  # a bound on the audit store's commit, not a wait for time

            # NATS goes away for a moment: the session goes on on A; the nodes reconnect, and
            # the viewers on B and C get the output again
            nats_server.stop()
            await controller.send(b"echo outage-$((1+1))\n")
            await controller.output_contains(b"outage-2")
            nats_server.start()
            with trio.fail_after(20):
                for attempt in range(1000):
                    await controller.send(f"echo back-$((1000+{attempt}))\n".encode())
                    with trio.move_on_after(1):  # a bound per attempt: subscriptions come back one by one
                        for participant in (viewers[0], viewers[9]):
                            await participant.output_contains(f"back-{1000 + attempt}".encode())
                        break

            # the controller's tab closes; reloaded, its page lands on B (no sticky sessions): it
            # comes back within the grace period through the bus, as itself, and A still decides
            await controller.ws.aclose()
            await viewers[9].control("state", state="disconnected")
            async with open_bus(bus_url, name="forger") as forger:  # a client that holds the bus's credentials
                # what A sends each remote participant alone: the returning controller's keyframe
                # names its subject; every viewer's gets the news of the return
                alone = await forger.subscribe(f"cosession.s.{sid}.out.to.*")
                await forger.flush()
                back, answer = await _join(nursery, b, "alice", sid)
                assert answer["type"] == "joined" and answer["role"] == "controller" and answer["rejoined"], answer
                await viewers[9].control("state", state="active")
                viewer_tokens, controller_token = set(), None
                with trio.fail_after(10):
                    async for message in alone:
                        body = sb.decode(message.payload)
                        if "keyframe" in body and controller_token is None:
                            controller_token = sb.token_of(message.subject)
                        elif "event" in body:
                            viewer_tokens.add(sb.token_of(message.subject))
                        if controller_token and len(viewer_tokens - {controller_token}) >= 9:
                            break
                # a node that speaks on the bus for a viewer, or for nobody, as the controller:
                # refused by A and audited, never typed
                forged = Input(answer["participant_id"], b"echo forged-$((5*5))\n")
                for token in (sorted(viewer_tokens - {controller_token})[0], "nobody"):
                    await forger.publish(sb.control_subject(sid), sb.encode({"op": "tell", "token": token,
                                                                             "message": forged}))
                await forger.flush()
                # ... and one that says alice is an administrator: A reads who she is in the database
                claimed = User(answer["you"]["id"], "alice", is_admin=True)
                reply = sb.decode((await forger.request(sb.control_subject(sid), sb.encode(
                    {"op": "terminate", "by": claimed}), timeout=10)).payload)
                assert reply["answer"].reason is Reason.NOT_ADMINISTRATOR, reply
                await alone.unsubscribe()
            await back.send(b"echo returned-$((6*7+1))\n")
            for participant in [back, viewers[0], viewers[4], viewers[9]]:  # B, A and C
                await participant.output_contains(b"returned-43")
            await back.send({"type": "resize", "cols": 90, "rows": 20})
            for viewer in (viewers[1], viewers[4], viewers[9]):  # every viewer's terminal follows, on B, A and C
                await viewer.control("size", cols=90, rows=20)
            await back.send(b"stty size\n")
            await back.output_contains(b"20 90")
            # a viewer on B, beside the controller's channel there, still has no path to the input
            await viewers[1].send(b"echo forged-$((2*2))\n")
            assert (await viewers[1].control("refused", reason="not_controller"))["of"] == "input"
            await viewers[1].send({"type": "resize", "cols": 10, "rows": 5})
            assert (await viewers[1].control("refused", reason="not_controller"))["of"] == "resize"
            await back.send(b"echo after-$((3*3))\n")
            await viewers[4].output_contains(b"after-9")
            assert b"forged-4" not in viewers[4].output and b"forged-4" not in back.output
            assert b"forged-25" not in viewers[4].output and b"forged-25" not in back.output
            with trio.fail_after(10):
                while len(refusals := [json.loads(r.detail) for r in await trio.to_thread.run_sync(
                        _audit_rows, postgres_url, "input_refused") if r.session_id == sid]) < 2:
                    await trio.sleep(0.05)  # a bound on the audit store's commit, not a wait for time
            assert {(x.get("reason"), x.get("via")) for x in refusals} >= {("not_controller", None),
                                                                            ("not_a_participant", "bus")}
            assert any(x.get("participant") not in (None, answer["participant_id"]) and x.get("via") is None
                       and x["reason"] == "not_controller" and "message" not in x for x in refusals), refusals
            with trio.fail_after(10):
                while not (refused_terminates := await trio.to_thread.run_sync(
                        _audit_rows, postgres_url, "terminate_refused")):
                    await trio.sleep(0.05)  # a bound on the audit store's commit, not a wait for time
            assert [(r.session_id, r.actor_name) for r in refused_terminates] == [(sid, "alice")]
            reconnects = await trio.to_thread.run_sync(_audit_rows, postgres_url, "reconnect")
            assert [(r.session_id, r.actor_name) for r in reconnects] == [(sid, "alice")]
            controller = back
            # Files through B: its SFTP runs on the session's SSH connection, on A
            content = b"across nodes\n" * 30000  # two chunks and a bit
            listed, downloaded = await trio.to_thread.run_sync(_files_through, b.url, sid, content)
            assert "cluster-file.bin" in listed and downloaded == content
            with trio.fail_after(10):  # audited by B, in the shared chain
                while not (uploads := await trio.to_thread.run_sync(_audit_rows, postgres_url, "file_upload")):
                    await trio.sleep(0.05)  # a bound on the audit store's commit, not a wait for time
            assert [(r.session_id, r.actor_name, json.loads(r.detail)["size"]) for r in uploads] == \
                [(sid, "alice", len(content))]

            # terminate from B: every socket on A, B and C closes, each told why
            answer = await trio.to_thread.run_sync(_terminate, b.url, sid)
            assert answer.status_code == 200, answer.text
            for participant in [controller, *viewers]:
                ended = await participant.control("ended")
                assert ended["reason"] == "terminated"
                await participant.until_closed()

            # kill -9 of A: its session ends for the viewers on B and C, as node_failed, audited
            # by a surviving node
            second = await _open(nursery, a, "alice", f"/ws/endpoints/{endpoint_id}/start")
            await second.send({"type": "start", "cols": 100, "rows": 30})
            second_sid = (await second.control("joined"))["session_id"]
            on_b, answer_b = await _join(nursery, b, VIEWERS[0], second_sid)
            on_c, answer_c = await _join(nursery, c, VIEWERS[5], second_sid)
            assert answer_b["type"] == answer_c["type"] == "joined", (answer_b, answer_c)
            a.proc.kill()
            for participant in (on_b, on_c):
                ended = await participant.control("ended", deadline=15)
                assert ended["reason"] == "node_failed"
                await participant.until_closed()

            for participant in [controller, *viewers, extra, second, on_b, on_c]:
                with trio.move_on_after(5):
                    await participant.ws.aclose()
            nursery.cancel_scope.cancel()

        ended_rows = await trio.to_thread.run_sync(_audit_rows, postgres_url, "session_ended")
        assert [json.loads(r.detail)["reason"] for r in ended_rows if r.session_id == second_sid] == ["node_failed"]

        assert [r.session_id for r in await trio.to_thread.run_sync(_audit_rows, postgres_url, "terminate")] == [sid]
        joins = await trio.to_thread.run_sync(_audit_rows, postgres_url, "join")
        assert len([row for row in joins if row.session_id == sid]) == 10
        refused_rows = await trio.to_thread.run_sync(_audit_rows, postgres_url, "join_refused")
        assert [json.loads(r.detail)["reason"] for r in refused_rows if r.session_id == sid] == ["viewer_cap"]
    finally:
        for node in reversed(nodes):
            killed = node.proc.poll() is not None
            code, out, err = node.stop(signal.SIGTERM)
            assert (killed or code == 0) and "Traceback" not in err, err
            assert NATS_PASSWORD not in out + err
            if not killed:  # its log named the bus (NATS went away and came back), the password hidden
                assert f"bus nats://{NATS_USER}:***@127.0.0.1:{nats_server.port}: reconnected" in err, err

    checked = subprocess.run([sys.executable, "-m", "cosession.cli", "audit", "verify", "--database",
                              _plain(postgres_url)], cwd=ROOT, env=_clean_env(), capture_output=True, text=True,
                             timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_an_unreachable_bus_is_a_clear_refusal_to_start(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = subprocess.run([sys.executable, "-m", "cosession.cli", "serve", "--no-demo", "--port", "0",
                              "--data-dir", str(tmp_path), "--bus", f"nats://127.0.0.1:{port}"],
                             cwd=ROOT, env=_clean_env(), capture_output=True, text=True, timeout=60)
    assert started.returncode == 1, started.stdout + started.stderr
    assert f"cosession serve: cannot connect to nats://127.0.0.1:{port}" in started.stderr
    assert "Traceback" not in started.stderr


def test_a_node_with_wrong_bus_credentials_does_not_start_and_says_why_unsaid(tmp_path, nats_server_with_password):
    url = nats_server_with_password.url_with(f"{NATS_USER}:wrong-{NATS_PASSWORD}")
    started = subprocess.run([sys.executable, "-m", "cosession.cli", "serve", "--no-demo", "--port", "0",
                              "--data-dir", str(tmp_path), "--bus", url],
                             cwd=ROOT, env=_clean_env(), capture_output=True, text=True, timeout=60)
    assert started.returncode == 1, started.stdout + started.stderr
    port = nats_server_with_password.port
    assert f"cosession serve: cannot connect to nats://{NATS_USER}:***@127.0.0.1:{port}: authorization violation" \
        in started.stderr
    assert NATS_PASSWORD not in started.stdout + started.stderr and "Traceback" not in started.stderr


def test_a_node_signs_in_with_a_creds_file_and_a_bad_one_stops_it_unsaid(tmp_path, nats_server_in_operator_mode):
    """`[engine] bus_credentials_file` (here from the environment): a node signs in to a NATS
    server in operator mode with a .creds file, as `nsc` makes it, and serves; a file that is
    not one stops the start with exit 1 and says why; no output shows the seed."""
    server = nats_server_in_operator_mode
    creds = Path(server.credentials).read_text()
    seed = creds.split("-----BEGIN USER NKEY SEED-----")[1].split()[0]
    node = Served(tmp_path / "node", "--no-demo", "--bus", server.url,
                  env={"COSESSION_ENGINE_BUS_CREDENTIALS_FILE": server.credentials})
    assert httpx.get(node.url + "/readyz", timeout=10).status_code == 200
    code, out, err = node.stop(signal.SIGTERM)
    assert code == 0 and "Traceback" not in err and seed not in out + err, err
    assert "disconnected" not in err  # its own close of the bus is no disconnection

    (tmp_path / "half.creds").write_text(creds.split("-----BEGIN USER NKEY SEED")[0])
    started = subprocess.run([sys.executable, "-m", "cosession.cli", "serve", "--no-demo", "--port", "0",
                              "--data-dir", str(tmp_path / "other"), "--bus", server.url],
                             cwd=ROOT, env={**_clean_env(), "COSESSION_ENGINE_BUS_CREDENTIALS_FILE":
                                            str(tmp_path / "half.creds")},
                             capture_output=True, text=True, timeout=60)
    assert started.returncode == 1, started.stdout + started.stderr
    assert f"cosession serve: the bus's credentials file {tmp_path / 'half.creds'} is neither a NATS .creds file" \
        in started.stderr
    assert "Traceback" not in started.stderr
