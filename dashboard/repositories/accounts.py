"""Users: names, argon2id password hashes, the administrator flag.

Sync SQLAlchemy Core: code on the trio loop calls these through ``trio.to_thread.run_sync``.
Every method returns ``engine.messages.User`` values, never a password hash.
"""

from __future__ import annotations

import re
import secrets
import time
import uuid

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from dashboard.repositories.tables import users as t_users
from engine.messages import User

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024  # argon2 hashes any length; this only bounds the work per attempt


class AccountError(ValueError):
    """A user cannot be created as asked; the message says why, for the person asking."""


def generate_password() -> str:
    """A random password of 16 URL-safe characters (96 bits)."""
    return secrets.token_urlsafe(12)


class Users:
    def __init__(self, db: sa.Engine, hasher: PasswordHasher | None = None) -> None:
        self._db = db
        self._hasher = hasher or PasswordHasher()  # argon2id, the library's RFC 9106 defaults
        # Verified against when the name is unknown, so that a wrong name costs as much time
        # as a wrong password and does not tell which names exist.
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))

    # --- writes ---------------------------------------------------------------------------

    def create(self, name: str, password: str, *, is_admin: bool = False) -> User:
        name = name.strip()
        if not NAME.match(name):
            raise AccountError("a user name is 1-64 letters, digits, '.', '_', '@' or '-', "
                               "starting with a letter or digit")
        if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
            raise AccountError(f"a password has {MIN_PASSWORD} to {MAX_PASSWORD} characters")
        user = User(str(uuid.uuid4()), name, bool(is_admin))
        try:
            with self._db.begin() as db:
                db.execute(t_users.insert().values(
                    id=user.id, name=name, password_hash=self._hasher.hash(password),
                    is_admin=user.is_admin, created_at=time.time()))
        except sa.exc.IntegrityError as exc:
            raise AccountError(f"a user named {name!r} already exists") from exc
        return user

    def set_password(self, user_id: str, password: str) -> None:
        if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
            raise AccountError(f"a password has {MIN_PASSWORD} to {MAX_PASSWORD} characters")
        with self._db.begin() as db:
            db.execute(t_users.update().where(t_users.c.id == user_id)
                       .values(password_hash=self._hasher.hash(password)))

    # --- reads ----------------------------------------------------------------------------

    def authenticate(self, name: str, password: str) -> User | None:
        """The user if the password is right, else None (same cost for an unknown name)."""
        if len(password) > MAX_PASSWORD:
            return None
        with self._db.connect() as db:
            row = db.execute(sa.select(t_users).where(t_users.c.name == name.strip())).first()
        stored = row.password_hash if row is not None else self._dummy_hash
        try:
            self._hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return None
        if row is None:  # pragma: no cover - the dummy's password is never guessed
            return None
        if self._hasher.check_needs_rehash(stored):
            with self._db.begin() as db:
                db.execute(t_users.update().where(t_users.c.id == row.id)
                           .values(password_hash=self._hasher.hash(password)))
        return _user(row)

    def get(self, user_id: str) -> User | None:
        with self._db.connect() as db:
            row = db.execute(sa.select(t_users).where(t_users.c.id == user_id)).first()
        return _user(row) if row is not None else None

    def get_by_name(self, name: str) -> User | None:
        with self._db.connect() as db:
            row = db.execute(sa.select(t_users).where(t_users.c.name == name.strip())).first()
        return _user(row) if row is not None else None

    def list(self) -> list[User]:
        with self._db.connect() as db:
            rows = db.execute(sa.select(t_users).order_by(t_users.c.name)).all()
        return [_user(row) for row in rows]

    def count(self) -> int:
        with self._db.connect() as db:
            return db.execute(sa.select(sa.func.count()).select_from(t_users)).scalar_one()


def _user(row: sa.Row) -> User:
    return User(row.id, row.name, bool(row.is_admin))
