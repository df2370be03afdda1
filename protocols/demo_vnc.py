"""The demo desktop: TigerVNC's Xvnc on loopback with an xterm and a clock.

`cosession serve` starts it beside the demo SSH server, so that a newcomer can try a graphical
joint session with nothing else to set up. It is a `protocols.xvnc` display listening on
127.0.0.1 only, with VNC authentication and a random password, `-AlwaysShared` (so the demo can
also be watched with any VNC viewer) and its own display number (the first free one from :50).
Its X clients are an xterm running the gateway user's login shell and, when x11-apps is
installed, xclock.

The shell runs as the gateway's own OS user, as the demo SSH shell does: a convenience for
trying cosession on one machine, not something to leave on in production
(`[demo] enabled = false`). Cancelled, it leaves no process, display or file behind.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path
from typing import Any

import trio

from protocols.xvnc import XvncDisplay, XvncUnavailable, serve_xvnc

DemoVnc = XvncDisplay
DemoUnavailable = XvncUnavailable


async def serve_demo_vnc(host: str = "127.0.0.1", *, width: int = 1280, height: int = 800,
                         password: str | None = None, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Run the demo desktop until cancelled; `task_status.started(XvncDisplay)` once it answers."""
    shell = os.environ.get("SHELL") or pwd.getpwuid(os.getuid()).pw_shell or "/bin/sh"
    clients = [["xterm", "-geometry", "100x32+30+30", "-T", "cosession demo", "-e", shell, "-l"],
               ["xclock", "-geometry", "180x180-30+30", "-update", "1"]]
    await serve_xvnc(width=width, height=height, tcp_host=host, password=password, clients=clients,
                     name="cosession demo", client_cwd=str(Path.home()), task_status=task_status)
