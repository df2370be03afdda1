"""TOTP authenticators (RFC 6238), one per user: enrolment, the check of a token, removal.

The secret is stored encrypted (security/secrets.py), bound to the user's id; a token's time
step is recorded with a compare-and-set, so that one token opens one start even when two arrive
at once. The check itself is engine/access.py's `check_totp`.

Sync SQLAlchemy Core: on the trio loop call it through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import logging

import pyotp
import sqlalchemy as sa

from dashboard.repositories.tables import mfa_secrets as t_mfa
from dashboard.security.secrets import Secrets, reencrypt
from engine import access as rules
from engine.access import TotpAccepted
from engine.messages import Reason, Refused, User

log = logging.getLogger(__name__)

TOTP_ISSUER = "cosession"


class Authenticators:
    def __init__(self, db: sa.Engine, secrets: Secrets) -> None:
        self._db = db
        self._secrets = secrets

    def _context(self, user_id: str) -> str:
        return f"mfa:{user_id}"

    def reencrypt(self, conn: sa.Connection, old: Secrets, new: Secrets) -> int:
        """Every authenticator's secret, decrypted with `old` and encrypted again with `new`, in
        the caller's transaction (`Repositories.reencrypt`). The number of secrets."""
        rows = conn.execute(sa.select(t_mfa.c.user_id, t_mfa.c.secret)).all()
        for row in rows:
            blob = reencrypt(row.secret, old, new, context=self._context(row.user_id),
                             what=f"the authenticator of user {row.user_id}")
            conn.execute(t_mfa.update().where(t_mfa.c.user_id == row.user_id).values(secret=blob))
        return len(rows)

    def status(self, user: User) -> str:
        """'none', 'unconfirmed' (enrolment begun, no token accepted yet) or 'enrolled'."""
        with self._db.connect() as db:
            row = db.execute(sa.select(t_mfa.c.confirmed).where(t_mfa.c.user_id == user.id)).first()
        return "none" if row is None else "enrolled" if row.confirmed else "unconfirmed"

    def begin(self, user: User, now: float) -> str:
        """A new secret for `user`, stored unconfirmed (replacing any earlier one), and its
        otpauth:// URI for the QR code. The secret is shown once, on the enrolment page."""
        secret = pyotp.random_base32()
        blob = self._secrets.encrypt(secret, context=self._context(user.id))
        with self._db.begin() as db:
            db.execute(t_mfa.delete().where(t_mfa.c.user_id == user.id))
            db.execute(t_mfa.insert().values(user_id=user.id, secret=blob, confirmed=False, last_used_step=None,
                                             created_at=float(now)))
        return pyotp.TOTP(secret).provisioning_uri(name=user.name, issuer_name=TOTP_ISSUER)

    def uri(self, user: User) -> str | None:
        """The otpauth:// URI of an unconfirmed enrolment (to show its QR code again)."""
        with self._db.connect() as db:
            row = db.execute(sa.select(t_mfa.c.secret, t_mfa.c.confirmed).where(t_mfa.c.user_id == user.id)).first()
        if row is None or row.confirmed:
            return None
        secret = self._secrets.decrypt(row.secret, context=self._context(user.id))
        return pyotp.TOTP(secret).provisioning_uri(name=user.name, issuer_name=TOTP_ISSUER)

    def check(self, user: User, token: str, now: float, *, confirming: bool = False) -> Refused | TotpAccepted:
        """Check a token (engine.access.check_totp) and, if accepted, record its step with a
        compare-and-set, so that one token opens one start even when two arrive at once.
        `confirming`: the first token of an enrolment, which then becomes usable."""
        with self._db.connect() as db:
            row = db.execute(sa.select(t_mfa).where(t_mfa.c.user_id == user.id)).first()
        if row is None or bool(row.confirmed) == confirming:
            secret = None
        else:
            try:
                secret = self._secrets.decrypt(row.secret, context=self._context(user.id))
            except Exception:
                log.warning("the authenticator secret of user %s does not decrypt", user.id)
                secret = None
        answer = rules.check_totp(secret, token, row.last_used_step if row is not None else None, now)
        if isinstance(answer, Refused):
            return answer
        last = t_mfa.c.last_used_step
        with self._db.begin() as db:
            done = db.execute(t_mfa.update().where(  # the secret checked, not one enrolled meanwhile
                t_mfa.c.user_id == user.id, t_mfa.c.secret == row.secret, sa.or_(last.is_(None), last < answer.step))
                .values(last_used_step=answer.step, confirmed=True)).rowcount
        if not done:
            return Refused(Reason.MFA_REUSED, "this token was already used: wait for the next one")
        return answer

    def remove(self, user_id: str) -> bool:
        with self._db.begin() as db:
            return db.execute(t_mfa.delete().where(t_mfa.c.user_id == user_id)).rowcount > 0
