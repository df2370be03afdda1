"""docs/api.md: every route is documented, and its curl example works against a live gateway."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dashboard import api
from engine.messages import EndpointProtocol, SessionEnded

DOC = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()


def test_every_route_is_documented():
    for route in api.routes:
        path = re.sub(r"\{[a-z_]+\}", "{id}", route.path)
        for method in sorted(route.methods - {"HEAD"}):
            documented = f"{method} {path}" in DOC or (method == "PATCH" and f"PUT {path}` (or `PATCH`)" in DOC) \
                or (method in ("PUT", "DELETE") and f"`{method}" in DOC and path in DOC)
            assert documented, f"{method} {route.path} is not in docs/api.md"


@pytest.mark.skipif(not (shutil.which("curl") and shutil.which("jq")), reason="needs curl and jq")
def test_the_curl_example(live_gateway):
    gw = live_gateway
    gw.create_user("root", "root-password-1", admin=True)
    alice = gw.create_user("alice", "alice-password")
    endpoint = gw.create_endpoint("build-server", EndpointProtocol.SYNTHETIC, host="")
    gw.grant(endpoint, alice)
    session = gw.engine.open_session(endpoint.spec, alice)
    script = re.search(r"<!-- example: api-curl -->\n```bash\n(.*?)```", DOC, re.S).group(1)
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "BASE": gw.base_url, "ADMIN": "root", "PASSWORD": "root-password-1"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"{session.session_id} build-server alice 0 viewers"
    assert lines[1].startswith('{"terminated":true') and session.session_id in lines[1]
    assert re.fullmatch(r"\S+Z terminate by root", lines[2]), lines
    assert session.sink.wait_for(lambda s: s.events_of(SessionEnded))
