"""Shared pytest configuration: fixture modules are registered here, one per line (a module
comes after those it imports, so that pytest rewrites its asserts)."""

pytest_plugins = [
    "tests.fixtures.gateway",
    "tests.fixtures.browser",
    "tests.fixtures.nats",
    "tests.fixtures.openssh",
    "tests.fixtures.postgres",
    "tests.fixtures.xvnc",
    "tests.fixtures.rdp",
    "tests.fixtures.websockets",
]
