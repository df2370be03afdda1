"""Key material and the encryption of stored endpoint credentials.

Two keys, each from the settings or, when the setting is empty, from a file in the data
directory that the first start generates (mode 0600) and every later start reuses:

- ``secret_key`` (``<data_dir>/secret_key``) signs session cookies and share links (`signer`);
- ``credential_key`` (``<data_dir>/credential_key``, 32 bytes, base64) encrypts stored
  endpoint credentials with AES-256-GCM. It never goes into the database.

A ciphertext blob is ``version (1 byte) | nonce (12 bytes) | ciphertext+tag``. Each blob may be
bound to a context (an endpoint's id) as associated data, so a blob copied onto another row
does not decrypt there.

Rotating the credential key (`cosession keys rotate credential`) writes the new key to
``credential_key.new`` first, re-encrypts every stored secret in one transaction, then renames
the file over ``credential_key``. A ``credential_key.new`` found at start means a rotation was
interrupted between the two: the gateway refuses to start until the command is run again and
finishes it (it finds which of the two keys the stored secrets are under).
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets as _random
from pathlib import Path
from typing import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from itsdangerous import URLSafeTimedSerializer

from config.settings import Settings

SECRET_KEY_FILE = "secret_key"
CREDENTIAL_KEY_FILE = "credential_key"
ROTATING_SUFFIX = ".new"  # credential_key.new: the next key, while a rotation is under way
_VERSION = b"\x01"
_NONCE_BYTES = 12


class KeyMaterialError(ValueError):
    """A configured or stored key is unusable (wrong length, not base64, unreadable)."""


class DecryptionFailed(ValueError):
    """A blob does not decrypt with this key and context (another key, tampered, or moved)."""


def ensure_data_dir(path: Path) -> Path:
    """Create the data directory (0700 when we create it) and return it."""
    path = path.expanduser()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def _read_or_create(path: Path, make: Callable[[], str]) -> str:
    """The key in `path`, created by `make()` with mode 0600 if the file does not exist yet.
    Two processes starting at once agree: O_EXCL lets one write, the other reads its key."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        value = path.read_text().strip()
        if value:
            return value
        raise KeyMaterialError(f"{path} is empty: remove it to generate a new key, or restore the old one")
    value = make()
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
        f.flush()
        os.fsync(f.fileno())
    return value


def write_key_file(path: Path, value: str) -> None:
    """Write `value` to `path` (mode 0600) so that the file is either the old one or the new one
    whole: a temporary file, fsync, rename over `path`, fsync of the directory."""
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def generate_credential_key() -> str:
    return base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()


def generate_secret_key() -> str:
    return _random.token_urlsafe(48)


def decode_credential_key(text: str, where: str) -> bytes:
    text = text.strip()
    try:
        if "-" in text or "_" in text:
            key = base64.urlsafe_b64decode(text)
        else:
            key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyMaterialError(f"{where}: the credential key is not base64") from exc
    if len(key) != 32:
        raise KeyMaterialError(f"{where}: the credential key must be 32 bytes (base64), not {len(key)}")
    return key


def secret_key_of(settings: Settings) -> str:
    """`security.secret_key`, or the key file in the data directory (generated if missing)."""
    if settings.security.secret_key:
        return settings.security.secret_key
    data = ensure_data_dir(settings.data_path)
    return _read_or_create(data / SECRET_KEY_FILE, generate_secret_key)


def credential_key_of(settings: Settings) -> tuple[str, str]:
    """The credential key's text and where it came from: `security.credential_key`, or the key
    file in the data directory (generated if missing)."""
    if settings.security.credential_key:
        return settings.security.credential_key, "security.credential_key"
    data = ensure_data_dir(settings.data_path)
    return _read_or_create(data / CREDENTIAL_KEY_FILE, generate_credential_key), str(data / CREDENTIAL_KEY_FILE)


class Secrets:
    """The gateway's two keys, and AES-GCM for stored credentials."""

    def __init__(self, secret_key: str, credential_key: bytes) -> None:
        if len(secret_key) < 16:
            raise KeyMaterialError("security.secret_key is too short (at least 16 characters)")
        if len(credential_key) != 32:
            raise KeyMaterialError("the credential key must be 32 bytes")
        self.secret_key = secret_key
        self._aead = AESGCM(credential_key)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Secrets":
        """The keys from the settings, or from (newly generated) files in the data directory.
        Raises KeyMaterialError while a rotation of the credential key is unfinished."""
        secret_key = secret_key_of(settings)
        text, where = credential_key_of(settings)
        rotating = settings.data_path / (CREDENTIAL_KEY_FILE + ROTATING_SUFFIX)
        if not settings.security.credential_key and rotating.exists():
            raise KeyMaterialError(f"{rotating} exists: a rotation of the credential key was interrupted. Run "
                                   "`cosession keys rotate credential` again to finish it")
        return cls(secret_key, decode_credential_key(text, where))

    def signer(self, salt: str) -> URLSafeTimedSerializer:
        """A serializer for signed, timestamped tokens (share links, ...). Give each use its own
        `salt`, so that a token made for one purpose is refused by every other."""
        if not salt:
            raise ValueError("a signer needs a salt naming its purpose")
        return URLSafeTimedSerializer(self.secret_key, salt=f"cosession.{salt}")

    def encrypt(self, plaintext: str, *, context: str = "") -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext.encode("utf-8"), context.encode())

    def decrypt(self, blob: bytes, *, context: str = "") -> str:
        blob = bytes(blob)
        if len(blob) < 1 + _NONCE_BYTES + 16 or blob[:1] != _VERSION:
            raise DecryptionFailed("not a credential blob")
        nonce, body = blob[1:1 + _NONCE_BYTES], blob[1 + _NONCE_BYTES:]
        try:
            return self._aead.decrypt(nonce, body, context.encode()).decode("utf-8")
        except InvalidTag as exc:
            raise DecryptionFailed("the credential does not decrypt with this key") from exc

    def __repr__(self) -> str:
        return "Secrets(<hidden>)"


def reencrypt(blob: bytes, old: Secrets, new: Secrets, *, context: str, what: str) -> bytes:
    """`blob` (encrypted with `old` for `context`) encrypted with `new` instead. Raises
    DecryptionFailed naming `what` if `old` does not decrypt it."""
    try:
        plaintext = old.decrypt(blob, context=context)
    except DecryptionFailed as exc:
        raise DecryptionFailed(f"the stored secret of {what} does not decrypt with the current key") from exc
    return new.encrypt(plaintext, context=context)
