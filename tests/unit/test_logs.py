"""The log's two formats, the request id on every line, and the settings of [log], [metrics] and
TLS: what each accepts and refuses."""

from __future__ import annotations

import io
import json
import logging

import pytest

from config.settings import SettingsError, is_loopback, load
from cosession import logs
from dashboard.web.request_log import REQUEST_ID


@pytest.fixture
def capture():
    """The root logger sending to a buffer through cosession.logs, restored afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)

    def configure(fmt: str) -> io.StringIO:
        stream = io.StringIO()
        logs.configure(load(env={}, log={"format": fmt}).log, stream)
        return stream

    yield configure
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])


def test_text_lines_carry_the_fields_and_the_request_id(capture):
    stream = capture("text")
    token = REQUEST_ID.set("r-123456789")
    try:
        logging.getLogger("cosession.test").info("joined the session", extra={
            "session": "s1", "user": "bob smith", "reason": 'a "quoted" reason', "role": None})
    finally:
        REQUEST_ID.reset(token)
    logging.getLogger("cosession.test").warning("outside a request")
    first, second = stream.getvalue().splitlines()
    assert first.endswith('INFO cosession.test: joined the session session=s1 user="bob smith" '
                          'reason="a \\"quoted\\" reason" request_id=r-123456789')
    assert "role=" not in first  # an empty field is left out
    assert second.endswith("WARNING cosession.test: outside a request")


def test_json_lines_are_one_object_each_with_the_exception(capture):
    stream = capture("json")
    log = logging.getLogger("cosession.test")
    log.info("left the session", extra={"session": "s1", "participant": "s1-2", "reason": "disconnected"})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed\nacross lines")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = map(json.loads, lines)
    assert first["level"] == "info" and first["logger"] == "cosession.test" and first["message"] == "left the session"
    assert (first["session"], first["participant"], first["reason"]) == ("s1", "s1-2", "disconnected")
    assert first["time"].endswith("Z")
    assert second["message"] == "failed\nacross lines" and "ValueError: boom" in second["exception"]


@pytest.mark.parametrize("layer, says", [
    ({"server": {"certfile": "/c.pem"}}, "go together"),
    ({"server": {"keyfile": "/k.pem"}}, "go together"),
    ({"log": {"format": "xml"}}, "log.format"),
    ({"log": {"level": "chatty"}}, "log.level"),
    ({"metrics": {"token": "short"}}, "too short"),
    ({"metrics": {"enabled": True}, "server": {"host": "0.0.0.0"}}, "needs metrics.token"),
])
def test_settings_refuse_what_cannot_work(layer, says):
    with pytest.raises(SettingsError, match=says):
        load(env={}, **layer)


def test_settings_accept_tls_and_hide_the_metrics_token():
    settings = load(env={"COSESSION_METRICS_TOKEN": "t" * 20, "COSESSION_LOG_FORMAT": "JSON"},
                    server={"certfile": "/c.pem", "keyfile": "/k.pem", "host": "0.0.0.0"}, metrics={"enabled": True})
    assert settings.server.tls and not settings.server.loopback and settings.log.format == "json"
    assert "t" * 20 not in repr(settings)


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True),
                                            ("[::1]", True), ("localhost", True), ("0.0.0.0", False), ("::", False),
                                            ("", False), ("192.0.2.1", False), ("gw.example.org", False)])
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_the_settings_never_show_the_database_password():
    settings = load(env={"COSESSION_ENGINE_DATABASE_URL": "postgresql://cosession:s3cret-pw@db:5432/cosession"})
    assert settings.database_url.endswith("@db:5432/cosession")
    assert "s3cret-pw" not in repr(settings) and "s3cret-pw" not in str(settings.engine)
