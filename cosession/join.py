"""Watch a joint session read-only in this terminal, from its share link.

    cosession join http://gateway:8080/sessions/SESSION?share=TOKEN [--user NAME] [--password-stdin]
                   [--snapshot FILE]

Signs in with ``POST /api/login``, opens the session's websocket (trio-websocket) with the
session cookie and this server's Origin, joins as a viewer, and writes the session's terminal
output to stdout as the bytes it is (a terminal of the same size shows the same screen). State
changes go to stderr. Exits when the session ends, with its reason: 0 when it ended, 1 when the
join was refused or the connection failed, 2 for a usage error.

A graphical session (VNC, RDP) cannot be shown in a terminal: the command says so and leaves
(exit 1), or with ``--snapshot FILE`` it speaks RFB as a browser does, saves the desktop as it
is now as a PNG, leaves and exits 0.

This module is also the websocket client of the load test (cosession/loadtest_ws.py) and of the
gateway's tests: `login` and `open_socket`.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import urllib.error
import urllib.request
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, BinaryIO, TextIO
from urllib.parse import urlsplit

import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection, wrap_client_stream

from dashboard.security.share import parse_share_url
from engine import encode_png
from protocols.rfb import RfbError
from protocols.rfb_browser import BrowserClient

GRAPHICAL = ("vnc", "rdp")

MAX_MESSAGE_BYTES = 16 << 20  # what the client accepts from the gateway (keyframes, batches)
SESSION_COOKIE = "cosession"


class JoinError(Exception):
    """A reason to give up, written for the person at the terminal."""


# --- the client ---------------------------------------------------------------------------------


def origin_of(base_url: str) -> str:
    parts = urlsplit(base_url)
    return f"{parts.scheme}://{parts.netloc}"


def login(base_url: str, name: str, password: str, timeout: float = 15.0) -> str:
    """Sign in; the ``Cookie`` header value of the signed-in session. Blocking."""
    request = urllib.request.Request(
        base_url.rstrip("/") + "/api/login", method="POST",
        data=json.dumps({"name": name, "password": password}).encode(),
        headers={"Content-Type": "application/json", "Origin": origin_of(base_url)})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            cookies = answer.headers.get_all("Set-Cookie") or []
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("detail", "")
        except (ValueError, AttributeError):
            detail = ""
        raise JoinError(f"sign-in as {name} failed: {detail or exc.reason} (HTTP {exc.code})") from None
    except (urllib.error.URLError, OSError) as exc:
        raise JoinError(f"cannot reach {base_url}: {getattr(exc, 'reason', exc)}") from None
    for cookie in cookies:
        pair = cookie.split(";", 1)[0].strip()
        if pair.startswith(SESSION_COOKIE + "="):
            return pair
    raise JoinError("the gateway did not return a session cookie")


def ws_url(base_url: str, path: str) -> str:
    parts = urlsplit(base_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}{path}"


def _headers(base_url: str, cookie: str | None, origin: str | None) -> list[tuple[bytes, bytes]]:
    headers = [(b"origin", (origin if origin is not None else origin_of(base_url)).encode())]
    if cookie:
        headers.append((b"cookie", cookie.encode()))
    return headers


class GatewaySocket:
    """A websocket to the gateway that owns its TCP stream. trio-websocket's client leaves its
    socket open when the server closes first (it waits for the server's TCP close, then stops
    reading without closing): `aclose` here closes both."""

    def __init__(self, ws: WebSocketConnection, stream: trio.abc.Stream) -> None:
        self.ws = ws
        self._stream = stream

    async def get_message(self) -> str | bytes:
        return await self.ws.get_message()

    async def send_message(self, message: str | bytes) -> None:
        await self.ws.send_message(message)

    @property
    def closed(self) -> Any:
        return self.ws.closed

    async def aclose(self) -> None:
        try:
            with trio.move_on_after(5):
                await self.ws.aclose()
        finally:
            await trio.aclose_forcefully(self._stream)


async def connect_socket(nursery: trio.Nursery, base_url: str, path: str, cookie: str | None, *,
                         origin: str | None = None, message_queue_size: int = 1,
                         receive_buffer_size: int = 65536, connect_timeout: float = 15.0) -> GatewaySocket:
    """A websocket to the gateway at `path`, signed in with `cookie`, from `origin` (by default
    the gateway's own, as a browser on its pages sends). Its tasks run in `nursery`; close it
    with ``aclose()``. Raises trio_websocket.HandshakeError if the gateway refuses it."""
    parts = urlsplit(ws_url(base_url, path))
    host = parts.hostname or "localhost"
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    resource = parts.path + (f"?{parts.query}" if parts.query else "")
    with trio.fail_after(connect_timeout):
        if parts.scheme == "wss":
            stream: trio.abc.Stream = await trio.open_ssl_over_tcp_stream(host, port)
        else:
            stream = await trio.open_tcp_stream(host, port)
        try:
            ws = await wrap_client_stream(
                nursery, stream, parts.netloc, resource, extra_headers=_headers(base_url, cookie, origin),
                message_queue_size=message_queue_size, max_message_size=MAX_MESSAGE_BYTES,
                receive_buffer_size=receive_buffer_size)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
    return GatewaySocket(ws, stream)


@asynccontextmanager
async def open_socket(base_url: str, path: str, cookie: str | None, *, origin: str | None = None,
                      message_queue_size: int = 1, receive_buffer_size: int = 65536,
                      connect_timeout: float = 15.0) -> AsyncIterator[GatewaySocket]:
    """`connect_socket` for one websocket, closed on leaving the block."""
    async with trio.open_nursery() as nursery:
        socket = await connect_socket(nursery, base_url, path, cookie, origin=origin,
                                      message_queue_size=message_queue_size,
                                      receive_buffer_size=receive_buffer_size, connect_timeout=connect_timeout)
        try:
            yield socket
        finally:
            await socket.aclose()


async def send_json(ws: Any, message: dict[str, Any]) -> None:
    await ws.send_message(json.dumps(message))


# --- the command --------------------------------------------------------------------------------


class Watcher:
    """Writes a session's output to `out` and its state changes to `err`."""

    def __init__(self, out: BinaryIO, err: TextIO, snapshot: str | None = None) -> None:
        self.out = out
        self.err = err
        self.snapshot = snapshot  # a graphical session: save the desktop here as a PNG
        self.desktop: BrowserClient | None = None
        self.done = False  # nothing more to watch: leave
        self.failed = False
        self.role = ""
        self.controller = ""
        self.viewers: dict[str, str] = {}
        self.max_viewers = 10
        self.ended: dict[str, Any] | None = None
        self.refused: dict[str, Any] | None = None

    def say(self, text: str) -> None:
        # on its own line, so that it is readable beside a full-screen program's output
        self.err.write(f"\r\n[cosession] {text}\r\n")
        self.err.flush()

    def data(self, data: bytes) -> bytes:
        """Terminal output to stdout; a desktop's RFB to its client. What to send back."""
        if self.desktop is None:
            self.out.write(data)
            self.out.flush()
            return b""
        try:
            reply = self.desktop.receive(data)
        except RfbError as exc:
            self.say(f"the gateway's desktop stream is not valid RFB: {exc}")
            self.done = self.failed = True
            return b""
        if self.desktop.frames.updates and self.snapshot and not self.done:
            frames = self.desktop.frames
            with open(self.snapshot, "wb") as out:
                out.write(encode_png(frames.framebuffer))
            self.say(f"saved the {frames.width}x{frames.height} desktop to {self.snapshot}")
            self.done = True
        return reply

    def control(self, m: dict[str, Any]) -> None:
        kind = m.get("type")
        if kind == "joined":
            self.role = m["role"]
            self.controller = (m.get("controller") or {}).get("name", "")
            self.max_viewers = m.get("max_viewers", 10)
            self.viewers = {x["participant_id"]: x["user"]["name"] for x in m["members"] if x["role"] == "viewer"}
            self.say(f"joined {m['endpoint']['name']} as {self.role} (read-only); controller "
                     f"{self.controller}; {len(self.viewers)}/{self.max_viewers} viewers; state {m['state']}")
            protocol = m["endpoint"].get("protocol", "")
            if protocol in GRAPHICAL:
                if self.snapshot:
                    self.desktop = BrowserClient()
                else:
                    self.say(f"this session shows a {protocol.upper()} desktop; cosession join shows terminals "
                             "only (save a picture of the desktop with --snapshot FILE)")
                    self.done = self.failed = True
        elif kind == "participant_joined":
            member = m["member"]
            if member["role"] == "viewer":
                self.viewers[member["participant_id"]] = member["user"]["name"]
            self.say(f"{member['user']['name']} joined as {member['role']} "
                     f"({len(self.viewers)}/{self.max_viewers} viewers)")
        elif kind == "participant_left":
            member = m["member"]
            self.viewers.pop(member["participant_id"], None)
            self.say(f"{member['user']['name']} left ({m.get('reason')})")
        elif kind == "state":
            self.say(f"session {m['state']}")
        elif kind == "reset":
            self.say(f"screen {m['cols']}x{m['rows']}")
        elif kind == "size":
            self.say(f"the controller resized the terminal to {m['cols']}x{m['rows']}")
        elif kind == "resync":
            self.say(f"fell behind: {m['dropped']} update(s) skipped, screen resynchronised")
        elif kind == "reconnecting":
            self.say(f"the endpoint connection dropped; reconnecting (attempt {m['attempt']})")
        elif kind == "ended":
            self.ended = m
            by = f" by {m['by']['name']}" if m.get("by") else ""
            detail = f": {m['detail']}" if m.get("detail") else ""
            self.say(f"session ended: {m['reason']}{by}{detail}")
        elif kind == "ejected":
            self.ended = {"reason": "ejected", "by": m.get("by")}
            self.say(f"removed from the session by {(m.get('by') or {}).get('name', 'someone')}")
        elif kind == "refused":
            if m.get("fatal"):
                self.refused = m
                self.say(f"refused: {m['reason']}" + (f" ({m['detail']})" if m.get("detail") else ""))


async def watch(base_url: str, session_id: str, token: str | None, cookie: str, watcher: Watcher) -> int:
    try:
        async with open_socket(base_url, f"/ws/sessions/{session_id}", cookie, message_queue_size=64) as ws:
            join: dict[str, Any] = {"type": "join"}
            if token:
                join["share"] = token
            await send_json(ws, join)
            while True:
                try:
                    message = await ws.get_message()
                except ConnectionClosed:
                    break
                if isinstance(message, bytes):
                    reply = watcher.data(message)
                    if reply:
                        await ws.send_message(reply)
                else:
                    watcher.control(json.loads(message))
                if watcher.done:
                    await send_json(ws, {"type": "leave"})
                    return 1 if watcher.failed else 0
    except HandshakeError as exc:
        watcher.say(f"the gateway refused the websocket: {exc}")
        return 1
    except OSError as exc:
        watcher.say(f"cannot connect: {exc}")
        return 1
    if watcher.ended is not None:
        return 0
    if watcher.refused is None:
        watcher.say("the connection to the gateway closed")
    return 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="the session's share link (http://HOST/sessions/ID?share=TOKEN)")
    parser.add_argument("--user", help="sign in as this user (default: $COSESSION_USER, then your login name)")
    parser.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of stdin (default: ask, or $COSESSION_PASSWORD)")
    parser.add_argument("--snapshot", metavar="FILE",
                        help="for a graphical (VNC, RDP) session: save the desktop as a PNG, then leave")
    parser.set_defaults(run=run)


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if os.environ.get("COSESSION_PASSWORD"):
        return os.environ["COSESSION_PASSWORD"]
    if sys.stdin.isatty():
        return getpass.getpass(f"password for {args.user or os.environ.get('COSESSION_USER') or getpass.getuser()}: ")
    raise JoinError("no password: use --password-stdin or set COSESSION_PASSWORD")


def run(args: argparse.Namespace) -> int:
    watcher = Watcher(sys.stdout.buffer, sys.stderr, getattr(args, "snapshot", None))
    try:
        base_url, session_id, token = parse_share_url(args.url)
    except ValueError as exc:
        print(f"cosession join: {exc}", file=sys.stderr)
        return 2
    user = args.user or os.environ.get("COSESSION_USER") or getpass.getuser()
    try:
        cookie = login(base_url, user, _password(args))
    except JoinError as exc:
        print(f"cosession join: {exc}", file=sys.stderr)
        return 1
    try:
        return trio.run(watch, base_url, session_id, token, cookie, watcher)
    except KeyboardInterrupt:
        watcher.say("stopped watching")
        return 130
