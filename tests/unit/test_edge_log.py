"""A failing connection is logged by cosession/web_server.py without rendering a traceback: the
exception and the file and line of its innermost frames (rendering a traceback takes 10-100 ms of
the event loop that every session shares, and any client can make its connection fail)."""

from __future__ import annotations

import logging

import pytest

from cosession.web_server import CompactTracebacks, _OncePerInterval, where


def _raise_in_a_group() -> BaseException:
    def inner() -> None:
        raise ValueError("the client's bytes")

    try:
        try:
            inner()
        except ValueError as exc:
            raise ExceptionGroup("in a nursery", [exc]) from None
    except ExceptionGroup as group:
        return group
    raise AssertionError("unreachable")


def test_where_names_the_innermost_frames_of_a_groups_first_exception():
    text = where(_raise_in_a_group())
    first = text.split(" < ")[0]
    assert first.startswith("test_edge_log.py:") and first.endswith(" inner"), text


def test_a_failure_is_logged_once_per_interval_with_where_and_no_traceback(caplog):
    report = _OncePerInterval(60.0)
    failure = _raise_in_a_group()
    with caplog.at_level(logging.WARNING, logger="cosession.web_server"):
        report("the connection from %s failed: %s", "127.0.0.1:1", "ValueError", exc=failure)
        report("the connection from %s failed: %s", "127.0.0.1:2", "ValueError", exc=failure)
    assert len(caplog.records) == 1
    record = caplog.records[0]
    assert record.exc_info is None
    assert "127.0.0.1:1" in record.getMessage() and " inner" in record.getMessage()
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize("args", [(), ("50%",)])
def test_hypercorns_error_lines_lose_their_traceback_and_keep_where(args):
    failure = _raise_in_a_group()
    record = logging.LogRecord("hypercorn.error", logging.ERROR, __file__, 1,
                               "Error in ASGI Framework" + (" %s" if args else ""), args,
                               (type(failure), failure, failure.__traceback__))
    assert CompactTracebacks().filter(record)
    assert record.exc_info is None
    message = record.getMessage()
    assert message.startswith("Error in ASGI Framework") and "the client's bytes" in message and " inner" in message
