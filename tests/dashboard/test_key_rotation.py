"""`cosession keys rotate credential` on a real gateway's data directory, with a real OpenSSH
endpoint: refused while the gateway runs; then every stored secret is under the new key, the old
key decrypts none of them, and after a restart a start with the stored password and Send
Password work as before. An interrupted rotation is finished by running it again."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import trio

import dashboard.security.secrets as secrets_module
from cosession.keys import RotationError, rotate_credential_key
from dashboard.repositories.tables import endpoints as t_endpoints
from dashboard.repositories.tables import mfa_secrets
from dashboard.security import share
from dashboard.security.secrets import (
    CREDENTIAL_KEY_FILE, DecryptionFailed, KeyMaterialError, Secrets, decode_credential_key,
)
from tests.dashboard.test_send_password import person, send_password, start, vault
from tests.fixtures.gateway import LiveGateway
from tests.fixtures.websockets import Harness

pytestmark = pytest.mark.openssh

ROOT = Path(__file__).resolve().parents[2]


def blobs(gateway: LiveGateway) -> list[tuple[str, bytes]]:
    """Every encrypted secret in the database, with the context it is bound to."""
    with gateway.services.db.connect() as conn:
        found = [(f"endpoint:{r.id}", r.secret) for r in conn.execute(
            sa.select(t_endpoints.c.id, t_endpoints.c.secret).where(t_endpoints.c.secret.is_not(None)))]
        found += [(f"mfa:{r.user_id}", r.secret) for r in conn.execute(
            sa.select(mfa_secrets.c.user_id, mfa_secrets.c.secret))]
    return found


def rotate(data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cosession.cli", "keys", "rotate", "credential", "--data-dir",
                           str(data)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin"})


class Again(Harness):
    """A Harness on a gateway whose database already has everything (no new endpoint)."""

    def __init__(self, gateway: Any, nursery: trio.Nursery) -> None:
        self.gateway, self.nursery, self.cookies, self.sockets = gateway, nursery, {}, []


async def test_rotating_the_credential_key_keeps_every_stored_secret_usable(tmp_path, openssh, nursery):
    data = tmp_path / "data"
    first = await trio.to_thread.run_sync(LiveGateway(data).start)
    try:
        h = Harness(first, nursery)
        endpoint = vault(h, openssh)
        carol = person(h, "carol", endpoint, "owner", True)
        first.services.mfa.begin(carol, first.services.now())  # an authenticator secret, stored encrypted
        controller, _ = await start(h, "carol", endpoint)
        assert (await send_password(controller))["password"] == openssh.password
        with pytest.raises(RotationError, match="stop the gateway first"):
            await trio.to_thread.run_sync(rotate_credential_key, first.settings)
        await h.close()
    finally:
        await trio.to_thread.run_sync(first.stop)
    old_key = (data / CREDENTIAL_KEY_FILE).read_text().strip()
    secret_key = (data / "secret_key").read_text().strip()

    done = await trio.to_thread.run_sync(rotate, data)
    assert done.returncode == 0, done.stderr
    assert "re-encrypted 1 endpoint credentials, 1 authenticator secrets" in done.stdout
    new_key = (data / CREDENTIAL_KEY_FILE).read_text().strip()
    assert new_key != old_key and not (data / (CREDENTIAL_KEY_FILE + ".new")).exists()
    assert oct((data / CREDENTIAL_KEY_FILE).stat().st_mode & 0o777) == "0o600"

    second = await trio.to_thread.run_sync(LiveGateway(data).start)
    try:
        old = Secrets(secret_key, decode_credential_key(old_key, "old"))
        new = Secrets(secret_key, decode_credential_key(new_key, "new"))
        stored = blobs(second)
        assert len(stored) == 2
        for context, blob in stored:  # the old key decrypts nothing; the new one everything
            with pytest.raises(DecryptionFailed):
                old.decrypt(blob, context=context)
            new.decrypt(blob, context=context)
        again = Again(second, nursery)
        controller, _ = await start(again, "carol", endpoint)  # a start with the stored password
        assert await send_password(controller) == {"type": "password", "password": openssh.password}
        assert second.services.mfa.uri(carol) is not None  # the authenticator's secret decrypts
        await again.close()
    finally:
        await trio.to_thread.run_sync(second.stop)


def test_an_interrupted_rotation_stops_the_start_and_is_finished_by_running_it_again(tmp_path):
    data = tmp_path / "data"
    gateway = LiveGateway(data).start()
    try:
        gateway.create_endpoint("vault", "ssh", "127.0.0.1", 22, username="u", password="the stored one")
    finally:
        gateway.stop()
    settings = gateway.settings
    # as if the command died after committing the database, before renaming the key file: the
    # database is under the next key, credential_key still holds the old one
    write_key_file = secrets_module.write_key_file
    calls: list[str] = []

    def write_then_crash(path: Path, value: str) -> None:
        calls.append(path.name)
        if path.name == CREDENTIAL_KEY_FILE:
            raise OSError("simulated crash")
        write_key_file(path, value)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(secrets_module, "write_key_file", write_then_crash)
        with pytest.raises(OSError, match="simulated crash"):
            rotate_credential_key(settings)
    assert calls == [CREDENTIAL_KEY_FILE + ".new", CREDENTIAL_KEY_FILE]
    with pytest.raises(KeyMaterialError, match="interrupted"):
        Secrets.from_settings(settings)
    counts = rotate_credential_key(settings)  # finishes it: the database is already under the new key
    assert counts == {"endpoint credentials": 1, "authenticator secrets": 0}
    assert not (data / (CREDENTIAL_KEY_FILE + ".new")).exists()
    again = LiveGateway(data).start()
    try:
        record = again.services.endpoints.get_by_name("vault")
        assert again.services.endpoints.stored_credentials(record.id).password == "the stored one"
    finally:
        again.stop()


def rotate_secret(data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cosession.cli", "keys", "rotate", "secret", "--data-dir",
                           str(data)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin"})


def test_rotating_the_secret_key_signs_everyone_out_and_keeps_the_stored_credentials(tmp_path):
    data = tmp_path / "data"
    first = LiveGateway(data).start()
    try:
        first.create_user("dave", "correct horse battery")
        first.create_endpoint("vault", "ssh", "127.0.0.1", 22, username="u", password="the stored one")
        cookie = first.api_session("dave", "correct horse battery").cookies["cosession"]
        assert httpx.get(first.url("/api/me"), cookies={"cosession": cookie}).status_code == 200
        link = share.make_token(first.services, "a-session")
        assert share.check_token(first.services, link, "a-session") is None
    finally:
        first.stop()
    old_secret = (data / "secret_key").read_text()
    credential_key = (data / CREDENTIAL_KEY_FILE).read_text()

    done = rotate_secret(data)
    assert done.returncode == 0, done.stderr
    assert "everyone signs in again" in done.stdout
    assert (data / "secret_key").read_text() != old_secret
    assert oct((data / "secret_key").stat().st_mode & 0o777) == "0o600"
    assert (data / CREDENTIAL_KEY_FILE).read_text() == credential_key  # not the credential key's business

    second = LiveGateway(data).start()
    try:
        assert httpx.get(second.url("/api/me"), cookies={"cosession": cookie}).status_code == 401  # signed out
        assert share.check_token(second.services, link, "a-session") is share.ShareProblem.INVALID
        second.api_session("dave", "correct horse battery")  # signing in again works
        record = second.services.endpoints.get_by_name("vault")
        assert second.services.endpoints.stored_credentials(record.id).password == "the stored one"
    finally:
        second.stop()


def test_a_key_set_in_the_settings_is_not_rotated_by_the_command(tmp_path):
    data = tmp_path / "data"
    env = {"PATH": "/usr/bin:/bin", "COSESSION_SECURITY_SECRET_KEY": "s" * 32}
    done = subprocess.run([sys.executable, "-m", "cosession.cli", "keys", "rotate", "secret", "--data-dir",
                           str(data)], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 1
    assert "security.secret_key" in done.stderr and not (data / "secret_key").exists()
