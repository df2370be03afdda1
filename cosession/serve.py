"""Run the gateway: the web application, the engine and (unless disabled) the demo endpoints:
an SSH server, and a desktop (Xvnc with an xterm and a clock) when TigerVNC is installed.

One trio event loop owns every socket: the loop bridge (endpoint connections), Hypercorn's
trio worker (HTTP and websockets) and the demo SSH server. The engine's actors run in their
own threads: started before the loop, stopped when it ends (Ctrl-C or SIGTERM). The demo
desktop's processes are stopped with the loop.

On the first start (no users yet) it creates an administrator ``admin`` and, with the demo
enabled, a user ``demo`` who may use the demo endpoints, and prints their passwords once.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import logging
import signal
import sys
from dataclasses import dataclass
from collections.abc import AsyncIterator
from typing import Any

import sqlalchemy as sa
import trio

log = logging.getLogger("cosession.serve")

DEMO_ENDPOINT = "demo"
DEMO_DESKTOP = "demo-desktop"
DEMO_USER = "demo"
ADMIN_USER = "admin"
GRACEFUL_SECONDS = 3.0  # at the stop, how long open connections get to finish


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to listen on (default: server.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default: server.port, 8080; 0: any free)")
    parser.add_argument("--data-dir", metavar="DIR", help="database, keys, recordings (default: server.data_dir)")
    parser.add_argument("--certfile", metavar="FILE", help="serve TLS with this PEM certificate chain (with --keyfile)")
    parser.add_argument("--keyfile", metavar="FILE", help="the certificate's PEM private key (with --certfile)")
    parser.add_argument("--database", metavar="URL",
                        help="the database: postgresql://USER@HOST:PORT/DB for several nodes (docs/cluster.md); "
                             "default: engine.database_url, else SQLite in the data directory")
    parser.add_argument("--bus", metavar="URL",
                        help="the NATS server between nodes: nats://HOST:PORT (tls://, USER:PASSWORD@ or TOKEN@; "
                             "a password here is visible in ps: prefer COSESSION_ENGINE_BUS_URL), so that a viewer on "
                             "one node joins a session run by another (docs/cluster.md); default: engine.bus_url, "
                             "else none")
    parser.add_argument("--no-demo", action="store_true", help="do not start the demo endpoints (SSH, desktop)")
    parser.set_defaults(run=run)


@dataclass
class _FirstRun:
    admin_password: str | None = None
    demo_password: str | None = None


def _say(text: str = "") -> None:
    print(text, flush=True)


def _settings(args: argparse.Namespace) -> Any:
    from config.settings import load

    server = {key: value for key, value in
              (("host", args.host), ("port", args.port), ("data_dir", args.data_dir),
               ("certfile", args.certfile), ("keyfile", args.keyfile)) if value is not None}
    overrides: dict[str, dict[str, Any]] = {"server": server}
    if args.no_demo:
        overrides["demo"] = {"enabled": False}
    engine = {key: value for key, value in (("database_url", args.database), ("bus_url", getattr(args, "bus", None)))
              if value}
    if engine:
        overrides["engine"] = engine
    return load(getattr(args, "config", None), **overrides)


def bootstrap_users(services: Any, *, demo: bool) -> _FirstRun:
    """On an empty users table: `admin` (administrator) and, with the demo, `demo`."""
    from dashboard.repositories.accounts import generate_password

    first = _FirstRun()
    if services.users.count() == 0:
        first.admin_password = generate_password()
        services.users.create(ADMIN_USER, first.admin_password, is_admin=True)
        if demo:
            first.demo_password = generate_password()
            services.users.create(DEMO_USER, first.demo_password)
    return first


def register_demo_endpoint(services: Any, demo: Any) -> Any:
    """Create or refresh the `demo` endpoint for a demo SSH server that just started: its
    address, its credential (stored encrypted) and its host key (known, so trusted). The demo
    user may use it. An administrator's Joint Session toggle is kept on a refresh."""
    from engine.messages import EndpointProtocol

    endpoints = services.endpoints
    record = endpoints.get_by_name(DEMO_ENDPOINT)
    if record is None:
        record = endpoints.create(DEMO_ENDPOINT, EndpointProtocol.SSH, demo.host, demo.port, username=demo.username,
                                  password=demo.password, joint_session=True)
    else:
        record = endpoints.update(record.id, protocol=EndpointProtocol.SSH, host=demo.host, port=demo.port,
                                  username=demo.username, password=demo.password)
    endpoints.trust_host_key(record.id, demo.host_key_openssh)
    user = services.users.get_by_name(DEMO_USER)
    if user is not None:
        from engine.access import AssetRole

        services.grants.grant(record.id, user.id, AssetRole.OWNER)
    return endpoints.get(record.id)


def register_demo_desktop(services: Any, demo: Any) -> Any:
    """Create or refresh the `demo-desktop` endpoint for a demo desktop that just started: its
    address and password (stored encrypted). The demo user may use it; an administrator's Joint
    Session toggle is kept on a refresh."""
    from engine.messages import EndpointProtocol

    endpoints = services.endpoints
    record = endpoints.get_by_name(DEMO_DESKTOP)
    if record is None:
        record = endpoints.create(DEMO_DESKTOP, EndpointProtocol.VNC, demo.host, demo.port,
                                  password=demo.password, joint_session=True)
    else:
        record = endpoints.update(record.id, protocol=EndpointProtocol.VNC, host=demo.host, port=demo.port,
                                  username="", password=demo.password)
    user = services.users.get_by_name(DEMO_USER)
    if user is not None:
        from engine.access import AssetRole

        services.grants.grant(record.id, user.id, AssetRole.OWNER)
    return endpoints.get(record.id)


async def _start_demo_desktop(nursery: trio.Nursery, services: Any) -> Any:
    """The demo desktop, registered; None (with a note) when Xvnc is missing or fails."""
    from protocols.demo_vnc import DemoUnavailable, serve_demo_vnc

    width, height = services.settings.vnc.demo_size
    try:
        demo = await nursery.start(functools.partial(serve_demo_vnc, "127.0.0.1", width=width, height=height))
        return await trio.to_thread.run_sync(register_demo_desktop, services, demo)
    except DemoUnavailable as exc:
        _say(f"note: no demo desktop: {exc}")
    except Exception:  # the gateway is useful without its demo
        log.exception("the demo desktop did not start")
        _say("warning: the demo desktop did not start (see the log); going on without it")
    return None


def _demo_server() -> Any:
    try:
        from protocols.demo_ssh import serve_demo_ssh
    except ModuleNotFoundError as exc:
        if exc.name != "protocols.demo_ssh":
            raise
        return None
    return serve_demo_ssh


async def _check_trio_asyncio() -> str | None:
    """asyncssh runs on this trio loop through trio-asyncio (each SSH connection opens its own
    asyncio loop, see protocols/ssh.py); say so at start-up if that cannot work here."""
    try:
        import trio_asyncio
    except ImportError as exc:
        return f"trio-asyncio is not installed ({exc}): SSH endpoints will not work"
    try:
        async with trio_asyncio.open_loop():
            pass
    except Exception as exc:  # the detail goes to the log, a short note to the console
        log.exception("trio-asyncio cannot open a loop")
        return f"trio-asyncio cannot open an asyncio loop ({type(exc).__name__}): SSH endpoints will not work"
    return None


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def exposure_warning(settings: Any) -> str | None:
    """What to say at start when the gateway listens beyond loopback without TLS: passwords,
    session cookies and every keystroke would cross the network in clear text."""
    if settings.server.loopback or settings.server.tls:
        return None
    return (f"warning: listening on {settings.server.host or 'every address'} WITHOUT TLS: sign-in passwords, "
            "session cookies and every keystroke cross the network in clear text. Give --certfile and "
            "--keyfile (or [server] certfile and keyfile), or put a TLS proxy in front and listen on 127.0.0.1 "
            "(docs/operations.md)")


async def _serve(services: Any, first: _FirstRun, tls: Any = None) -> None:
    settings = services.settings
    # Ctrl-C and SIGTERM end the loop through this receiver, never as a KeyboardInterrupt.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(services.bridge.serve)
            problem = await _check_trio_asyncio()
            if problem:
                _say(f"warning: {problem}")

            demo_record = desktop_record = None
            if settings.demo.enabled:
                serve_demo_ssh = _demo_server()
                if serve_demo_ssh is None:
                    _say("note: the demo SSH endpoint is not available in this build; starting without it")
                else:
                    try:
                        demo = await nursery.start(functools.partial(serve_demo_ssh, "127.0.0.1", 0))
                        demo_record = await trio.to_thread.run_sync(register_demo_endpoint, services, demo)
                    except Exception:  # the gateway is useful without its demo
                        log.exception("the demo SSH endpoint did not start")
                        _say("warning: the demo SSH endpoint did not start (see the log); going on without it")
                desktop_record = await _start_demo_desktop(nursery, services)

            async with _cluster(services):
                await _serve_app(services, first, tls, nursery, signals, demo_record, desktop_record)


class BusUnreachable(Exception):
    """`--bus` names a NATS server that cannot be reached at start."""


@contextlib.asynccontextmanager
async def _cluster(services: Any) -> AsyncIterator[None]:
    """With a bus (engine.bus_url), this node's link to the others for as long as it serves
    (dashboard/services/cluster.py); without one, nothing."""
    url = services.settings.engine.bus_url
    if not url:
        yield
        return
    from dashboard.services.cluster import ClusterLink
    from protocols.bus import BusError, open_bus

    node_id = services.engine.node.node_id if services.engine.node else services.settings.engine.node_id
    try:
        bus_context = open_bus(url, name=f"cosession-{node_id}", token=services.settings.engine.bus_token,
                               ca_file=services.settings.engine.bus_ca_file,
                               credentials_file=services.settings.engine.bus_credentials_file)
        bus = await bus_context.__aenter__()
    except BusError as exc:
        raise BusUnreachable(str(exc)) from None
    try:
        async with trio.open_nursery() as nursery:
            services.cluster = ClusterLink(services, bus, node_id)
            await nursery.start(services.cluster.run)
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()
    finally:
        services.cluster = None
        await bus_context.__aexit__(None, None, None)


async def _serve_app(services: Any, first: _FirstRun, tls: Any, nursery: trio.Nursery, signals: Any,
                     demo_record: Any, desktop_record: Any) -> None:
    from cosession import web_server
    from dashboard.app import create_app
    from dashboard.services import default_public_url

    settings = services.settings
    shutdown = trio.Event()
    app = create_app(services)
    binds = await nursery.start(functools.partial(
        web_server.serve, app, settings, shutdown_trigger=shutdown.wait, graceful_timeout=GRACEFUL_SECONDS,
        tls=tls))
    port = int(binds[0].rsplit(":", 1)[1]) if binds else settings.server.port
    if not settings.server.public_url:
        services.public_url = default_public_url(settings, port)

    _banner(services, binds, first, demo_record, desktop_record)
    # What start-up allocated lives as long as the process: out of the collector's sight,
    # a full collection (which a flood of short connections triggers) walks only what
    # was allocated since, instead of pausing the loop for every module and table.
    gc.freeze()

    async for signum in signals:
        _say(f"\n{signal.Signals(signum).name}: stopping (sessions end, the audit log is committed) ...")
        break
    # The engine stops while the loop still runs, so that endpoint connections close
    # cleanly; off the loop, in a worker thread, since Engine.stop() blocks.
    await trio.to_thread.run_sync(services.engine.stop)
    shutdown.set()
    with trio.move_on_after(GRACEFUL_SECONDS + 2):
        while len(nursery.child_tasks) > 1 + (demo_record is not None) + (desktop_record is not None):
            await trio.sleep(0.05)
    nursery.cancel_scope.cancel()


def _banner(services: Any, binds: list[str], first: _FirstRun, demo_record: Any, desktop_record: Any = None) -> None:
    url = services.public_url
    _say()
    _say(f"cosession is running: open {url}/")
    if len(binds) > 1 or (binds and not binds[0].startswith(url)):
        _say(f"  (listening on {', '.join(binds)})")
    warning = exposure_warning(services.settings)
    if warning:
        _say()
        _say(warning)
        log.warning("%s", warning.removeprefix("warning: "))
    if first.admin_password:
        _say()
        _say("First start: created these accounts. The passwords are shown only this once;")
        _say("to add or reset accounts later use `cosession admin create NAME`.")
        _say(f"  administrator  name: {ADMIN_USER:<6}  password: {first.admin_password}")
        if first.demo_password:
            _say(f"  user           name: {DEMO_USER:<6}  password: {first.demo_password}"
                 f"  (owner of the demo endpoint)")
    if demo_record is not None:
        _say()
        _say(f"Demo endpoint '{demo_record.name}': an SSH server on {demo_record.address}, joint sessions on.")
        _say("Try a joint session: sign in as demo, press Quick Access on 'demo' (you control the")
        _say("shell) and copy its share link; open it in a private window signed in as admin: you")
        _say("watch read-only, live.")
    if desktop_record is not None:
        _say(f"Demo desktop '{desktop_record.name}': a VNC desktop (Xvnc, an xterm, a clock) on "
             f"{desktop_record.address}: Quick Access opens it in the browser.")
    _say()
    _say("Press Ctrl-C to stop.")


def _shown(url: str) -> str:
    """A database URL fit for a message: its password hidden."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "(an unreadable URL)"


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc  # the driver's own message, not SQLAlchemy's wrapping
    text = str(cause).strip().splitlines()
    return text[0] if text else type(cause).__name__


def run(args: argparse.Namespace) -> int:
    from config.settings import SettingsError
    from dashboard.security.secrets import KeyMaterialError
    from dashboard.services import Services
    from engine import Engine, LoopBridge, NodeInUse, SchemaError

    from cosession import logs
    from cosession.web_server import tls_context

    try:
        settings = _settings(args)
    except SettingsError as exc:
        print(f"cosession serve: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log)
    try:
        tls = tls_context(settings.server)  # before anything starts: a bad certificate stops here
    except OSError as exc:
        print(f"cosession serve: {exc}", file=sys.stderr)
        return 2
    engine = Engine(settings)
    bridge = LoopBridge()
    try:
        services = Services.build(settings, engine, bridge)
    except (KeyMaterialError, OSError) as exc:
        print(f"cosession serve: {exc}", file=sys.stderr)
        return 1
    except (sa.exc.SQLAlchemyError, SchemaError) as exc:  # unreachable, refused, a schema it cannot migrate
        print(f"cosession serve: cannot open the database {_shown(settings.database_url)}: {_first_line(exc)}",
              file=sys.stderr)
        return 1
    try:
        first = bootstrap_users(services, demo=settings.demo.enabled and _demo_server() is not None)
        try:
            engine.start()  # ends what an earlier run of this node left open (engine/nodes.py)
        except NodeInUse as exc:  # another gateway runs under this node's name on this database
            print(f"cosession serve: {exc}", file=sys.stderr)
            return 1
        try:
            trio.run(_serve, services, first, tls)
        except BaseException as exc:
            leaves = _leaves(exc)
            if all(isinstance(e, KeyboardInterrupt) for e in leaves):
                pass  # a Ctrl-C before the signal receiver was open
            elif any(isinstance(e, BusUnreachable) for e in leaves):
                print(f"cosession serve: {next(e for e in leaves if isinstance(e, BusUnreachable))}",
                      file=sys.stderr)
                return 1
            elif all(isinstance(e, (OSError, KeyboardInterrupt)) for e in leaves):
                # the port is taken, the address does not exist ...
                print(f"cosession serve: {next(e for e in leaves if isinstance(e, OSError))}", file=sys.stderr)
                return 1
            else:
                raise
        finally:
            engine.stop()  # idempotent: already stopped on the loop after a signal
    finally:
        services.close()
    _say("stopped.")
    return 0
