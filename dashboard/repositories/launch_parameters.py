"""Each user's most recently used launcher parameters per endpoint (the Session Launcher and
Quick Access start with them)."""

from __future__ import annotations

import dataclasses
import json

import sqlalchemy as sa

from dashboard.repositories.tables import launch_parameters as t_params
from engine import access as rules
from engine.access import LaunchParameters
from engine.messages import User


def parameters_of(text: str | None) -> LaunchParameters | None:
    """Stored parameters (JSON), or None for none or a row of an older version."""
    if not text:
        return None
    try:
        return dataclasses.replace(rules.DEFAULT_PARAMETERS, **json.loads(text))
    except (ValueError, TypeError):
        return None  # a row from an older version: fall back to the defaults


class RememberedParameters:
    def __init__(self, db: sa.Engine) -> None:
        self._db = db

    def save(self, user: User, endpoint_id: str, parameters: LaunchParameters, now: float) -> None:
        text = json.dumps(dataclasses.asdict(parameters), sort_keys=True)
        with self._db.begin() as db:
            db.execute(t_params.delete().where(t_params.c.user_id == user.id, t_params.c.endpoint_id == endpoint_id))
            db.execute(t_params.insert().values(user_id=user.id, endpoint_id=endpoint_id, parameters=text,
                                                used_at=float(now)))
