"""A bus URL as a message or a log shows it (protocols/bus.py `shown`): a password or a token
never, the rest as given."""

from __future__ import annotations

import pytest

from protocols.bus import shown


@pytest.mark.parametrize(("url", "seen"), [
    ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
    ("nats://cosession:s3cret@nats.example:4222", "nats://cosession:***@nats.example:4222"),
    ("tls://cosession:s3cret@nats.example:4222", "tls://cosession:***@nats.example:4222"),
    ("nats://t0ken@127.0.0.1:4222", "nats://***@127.0.0.1:4222"),  # a name alone is a token to nats-py
    ("nats://cosession:p@ss@[::1]:4222", "nats://cosession:***@[::1]:4222"),  # an '@' in the password
    ("nats://:s3cret@127.0.0.1:4222", "nats://:***@127.0.0.1:4222"),
])
def test_a_bus_url_is_shown_without_its_secret(url, seen):
    assert shown(url) == seen
    assert "s3cret" not in shown(url) and "t0ken" not in shown(url)
