"""End-to-end smoke test of the browser tool chain: Debian's Chromium, Playwright, and the
xterm.js package that ``npm ci`` installs into dashboard/frontend/node_modules."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.sync_api import Page

XTERM = Path(__file__).resolve().parents[2] / "dashboard/frontend/node_modules/@xterm/xterm"

PAGE = b"""<!doctype html>
<html>
<head>
  <meta charset="utf-8">
  <link rel="stylesheet" href="/xterm/css/xterm.css">
  <script src="/xterm/lib/xterm.js"></script>
</head>
<body>
  <div id="terminal"></div>
  <script>
    window.term = new Terminal({cols: 80, rows: 24});
    window.term.open(document.getElementById("terminal"));
  </script>
</body>
</html>
"""


class _Handler(SimpleHTTPRequestHandler):
    """Serves the test page at / and the xterm package under /xterm/."""

    def do_GET(self) -> None:
        if self.path in ("/", "/index.html"):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(PAGE)))
            self.end_headers()
            self.wfile.write(PAGE)
        elif self.path.startswith("/xterm/"):
            self.path = self.path[len("/xterm") :]
            super().do_GET()
        else:
            self.send_error(404)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def xterm_site() -> Iterator[str]:
    assert (XTERM / "lib/xterm.js").is_file(), f"{XTERM} is missing: run ./dev.sh setup"
    handler = functools.partial(_Handler, directory=str(XTERM))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="xterm-site", daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host}:{port}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.browser
def test_xterm_renders_text_in_chromium(page: Page, xterm_site: str) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(xterm_site)
    page.wait_for_function("() => window.term !== undefined")
    page.evaluate("() => new Promise(resolve => window.term.write('hello from xterm', resolve))")

    # What xterm.js rendered into the DOM ...
    page.wait_for_function(
        "() => document.querySelector('.xterm-rows')?.textContent.includes('hello from xterm')"
    )
    # ... and what its buffer holds.
    first_line = page.evaluate(
        "() => window.term.buffer.active.getLine(0).translateToString(true)"
    )
    assert first_line == "hello from xterm"
    assert errors == []
