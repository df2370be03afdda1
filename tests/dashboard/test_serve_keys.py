"""Key material: generated once into the data directory (0600), reused, or taken from settings."""

from __future__ import annotations

import base64
import os
import stat

import pytest

from config.settings import load
from dashboard.security.secrets import DecryptionFailed, KeyMaterialError, Secrets


def settings_for(tmp_path, **security):
    return load(env={}, server={"data_dir": str(tmp_path / "data")}, security=security)


def test_keys_are_generated_once_and_reused(tmp_path):
    first = Secrets.from_settings(settings_for(tmp_path))
    data = tmp_path / "data"
    for name in ("secret_key", "credential_key"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert len(base64.b64decode((data / "credential_key").read_text())) == 32
    blob = first.encrypt("the password", context="endpoint:1")
    second = Secrets.from_settings(settings_for(tmp_path))
    assert second.secret_key == first.secret_key
    assert second.decrypt(blob, context="endpoint:1") == "the password"


def test_keys_from_settings_are_not_written(tmp_path):
    key = base64.b64encode(os.urandom(32)).decode()
    secrets = Secrets.from_settings(settings_for(tmp_path, secret_key="x" * 40, credential_key=key))
    assert secrets.secret_key == "x" * 40
    assert not (tmp_path / "data").exists()
    urlsafe = base64.urlsafe_b64encode(b"\xfb" * 32).decode()
    assert Secrets.from_settings(settings_for(tmp_path, secret_key="x" * 40, credential_key=urlsafe))


@pytest.mark.parametrize("key, message", [
    ("not base64 at all!", "base64"),
    (base64.b64encode(b"short").decode(), "32 bytes"),
])
def test_bad_credential_key_is_named(tmp_path, key, message):
    with pytest.raises(KeyMaterialError, match=message):
        Secrets.from_settings(settings_for(tmp_path, credential_key=key))


def test_empty_key_file_is_an_error_not_a_new_key(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "credential_key").write_text("")
    with pytest.raises(KeyMaterialError, match="empty"):
        Secrets.from_settings(settings_for(tmp_path))


def test_encryption_is_authenticated_and_bound_to_its_context():
    secrets = Secrets("k" * 32, os.urandom(32))
    blob = secrets.encrypt("pässword", context="endpoint:a")
    assert secrets.encrypt("pässword", context="endpoint:a") != blob  # a fresh nonce each time
    assert secrets.decrypt(blob, context="endpoint:a") == "pässword"
    with pytest.raises(DecryptionFailed):
        secrets.decrypt(blob, context="endpoint:b")
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(DecryptionFailed):
        secrets.decrypt(tampered, context="endpoint:a")
    with pytest.raises(DecryptionFailed):
        secrets.decrypt(b"junk", context="endpoint:a")
    assert "k" * 32 not in repr(secrets)
