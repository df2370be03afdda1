"""Access profiles: what a web session on an endpoint may do (deny, allow or record; the
clipboard; file transfer; whether MFA is required). Assigned to principals by
`grants.Grants.assign`; the decisions are engine/access.py's.

Sync SQLAlchemy Core: on the trio loop call it through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from dashboard.repositories.model import AccessError, new_id
from dashboard.repositories.tables import access_profiles as t_profiles
from dashboard.repositories.tables import profile_assignments as t_assign
from engine.access import Profile, WebSession

STANDARD_PROFILE = "Standard"  # web session allowed, nothing else: what a plain grant gives


def profile_of(row: Any) -> Profile:
    """A row of `access_profiles` (or a join that holds its columns) as the engine's Profile."""
    return Profile(name=row.name, web_session=WebSession(row.web_session), clipboard_upload=bool(row.clipboard_upload),
                   clipboard_download=bool(row.clipboard_download), file_transfer=bool(row.file_transfer),
                   mfa_required=bool(row.mfa_required), id=row.id)


class Profiles:
    def __init__(self, db: sa.Engine) -> None:
        self._db = db

    def create_profile(self, name: str, web_session: WebSession | str = WebSession.DENY, *,
                       clipboard_upload: bool = False, clipboard_download: bool = False,
                       file_transfer: bool = False, mfa_required: bool = False) -> Profile:
        values = self._profile_values(name, web_session, clipboard_upload, clipboard_download, file_transfer,
                                      mfa_required)
        profile_id = new_id()
        try:
            with self._db.begin() as db:
                db.execute(t_profiles.insert().values(id=profile_id, **values))
        except sa.exc.IntegrityError:
            raise AccessError(f"a profile named {values['name']!r} already exists") from None
        profile = self.profile(profile_id)
        assert profile is not None
        return profile

    def update_profile(self, profile_id: str, name: str, web_session: WebSession | str, *,
                       clipboard_upload: bool = False, clipboard_download: bool = False,
                       file_transfer: bool = False, mfa_required: bool = False) -> Profile:
        values = self._profile_values(name, web_session, clipboard_upload, clipboard_download, file_transfer,
                                      mfa_required)
        try:
            with self._db.begin() as db:
                if db.execute(t_profiles.update().where(t_profiles.c.id == profile_id).values(**values)).rowcount == 0:
                    raise AccessError("no such profile")
        except sa.exc.IntegrityError:
            raise AccessError(f"a profile named {values['name']!r} already exists") from None
        profile = self.profile(profile_id)
        assert profile is not None
        return profile

    @staticmethod
    def _profile_values(name: str, web_session: WebSession | str, clipboard_upload: bool, clipboard_download: bool,
                        file_transfer: bool, mfa_required: bool) -> dict[str, Any]:
        name = name.strip()
        if not name or len(name) > 128:
            raise AccessError("a profile name is 1 to 128 characters")
        try:
            setting = WebSession(web_session)
        except ValueError:
            raise AccessError("web session is deny, allow or record") from None
        return dict(name=name, web_session=setting.value, clipboard_upload=bool(clipboard_upload),
                    clipboard_download=bool(clipboard_download), file_transfer=bool(file_transfer),
                    mfa_required=bool(mfa_required))

    def delete_profile(self, profile_id: str) -> bool:
        with self._db.begin() as db:
            db.execute(t_assign.delete().where(t_assign.c.profile_id == profile_id))
            return db.execute(t_profiles.delete().where(t_profiles.c.id == profile_id)).rowcount > 0

    def profiles(self) -> list[Profile]:
        with self._db.connect() as db:
            return [profile_of(r) for r in db.execute(sa.select(t_profiles).order_by(t_profiles.c.name))]

    def profile(self, profile_id_or_name: str) -> Profile | None:
        with self._db.connect() as db:
            row = db.execute(sa.select(t_profiles).where(sa.or_(
                t_profiles.c.id == profile_id_or_name, t_profiles.c.name == profile_id_or_name))).first()
        return profile_of(row) if row is not None else None

    def standard_profile(self) -> Profile:
        """The profile a plain grant assigns (web session allowed, nothing else), made on first use."""
        found = self.profile(STANDARD_PROFILE)
        if found is not None:
            return found
        try:
            return self.create_profile(STANDARD_PROFILE, WebSession.ALLOW)
        except AccessError:  # made by someone else meanwhile
            found = self.profile(STANDARD_PROFILE)
            assert found is not None
            return found
