"""`cosession serve` as an operator runs it in production, as a real process: TLS from the
command line, JSON logs whose lines a request id ties together and that hold no credential, the
warning when it listens beyond loopback without TLS, a certificate that cannot be used."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import httpx

from tests.dashboard.test_serve import ROOT, Served
from tests.fixtures.tls import make_certificate


def test_tls_and_json_logs_tied_by_a_request_id(tmp_path):
    cert = make_certificate(tmp_path / "tls")
    served = Served(tmp_path / "data", "--no-demo", "--certfile", str(cert.certfile), "--keyfile", str(cert.keyfile),
                    env={"COSESSION_LOG_FORMAT": "json"})
    try:
        password = served.passwords()["admin"]
        assert served.url.startswith("https://127.0.0.1:")
        with httpx.Client(base_url=served.url, verify=cert.client_context()) as client:
            page = client.get("/login", headers={"X-Request-ID": "support-ticket-4711"})
            assert page.status_code == 200 and page.headers["x-request-id"] == "support-ticket-4711"
            assert page.headers["strict-transport-security"] == "max-age=31536000"
            assert "secure" in page.headers["set-cookie"].lower()
            signed_in = client.post("/api/login", json={"name": "admin", "password": password})
            assert signed_in.status_code == 200
            assert client.get("/sessions/nonexistent?share=a-share-token-value").status_code in (200, 403, 404)
            assert client.get("/healthz").status_code == 200
    finally:
        code, out, err = served.stop(signal.SIGTERM)
    assert code == 0, err
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]  # every line is one JSON object
    access = [line for line in lines if line["logger"] == "cosession.access"]
    login = [line for line in access if line.get("path") == "/login"]
    assert login and login[0]["request_id"] == "support-ticket-4711" and login[0]["status"] == 200
    assert login[0]["method"] == "GET" and login[0]["duration_ms"] >= 0
    assert any(line.get("path") == "/api/login" and line["request_id"] != "support-ticket-4711" for line in access)
    assert not any(line.get("path") == "/healthz" for line in access)  # probes are not logged
    for secret in (password, "a-share-token-value", cert.keyfile.read_text().splitlines()[1]):
        assert secret not in err
    assert password not in out.replace(f"password: {password}", "")  # shown once, in the first-start banner


def test_listening_beyond_loopback_without_tls_is_warned_about(tmp_path):
    served = Served(tmp_path / "data", "--no-demo", "--host", "0.0.0.0")
    try:
        served.passwords()
    finally:
        code, out, err = served.stop()
    assert code == 0, err
    assert "WITHOUT TLS" in out and "--certfile" in out
    quiet = Served(tmp_path / "data", "--no-demo")  # loopback: nothing to warn about
    try:
        quiet.passwords()
    finally:
        code, out, err = quiet.stop()
    assert "WITHOUT TLS" not in out + err


def test_a_certificate_that_cannot_be_used_stops_the_start(tmp_path):
    cert = make_certificate(tmp_path / "tls")
    other = make_certificate(tmp_path / "other")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSESSION_")}
    for certfile, keyfile, says in ((cert.certfile, other.keyfile, "cannot use the TLS certificate"),
                                    (tmp_path / "missing.pem", cert.keyfile, "cannot read the TLS certificate"),
                                    (cert.certfile, "", "go together")):
        result = subprocess.run(
            [sys.executable, "-m", "cosession.cli", "serve", "--port", "0", "--no-demo", "--data-dir",
             str(tmp_path / "data"), "--certfile", str(certfile), "--keyfile", str(keyfile)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        assert says in result.stderr and "Traceback" not in result.stderr
