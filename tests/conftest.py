"""Shared pytest configuration: fixture modules are registered here, one per line."""

pytest_plugins = [
    "tests.fixtures.browser",
    "tests.fixtures.gateway",
    "tests.fixtures.nats",
    "tests.fixtures.openssh",
    "tests.fixtures.postgres",
    "tests.fixtures.xvnc",
    "tests.fixtures.rdp",
]
