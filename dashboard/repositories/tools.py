"""The tool library: files administrators keep (a name, the file, its SHA-256) for Send Tool,
which puts one into the controller's home folder on an SSH host (dashboard/gateway/files.py)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import sqlalchemy as sa

from dashboard.repositories.model import AccessError, new_id
from dashboard.repositories.tables import tools as t_tools

MAX_TOOL_BYTES = 200 * 1024  # under the edge's request limit, which the upload form goes through


@dataclass(frozen=True, slots=True)
class Tool:
    id: str
    name: str
    file_name: str
    size: int
    sha256: str
    created_at: float
    created_by: str


def _tool(row: sa.Row) -> Tool:
    return Tool(row.id, row.name, row.file_name, row.size, row.sha256, row.created_at, row.created_by)


def check_file_name(file_name: str) -> str:
    """A plain file name for the home folder: no folder, nothing hidden or odd."""
    name = file_name.strip()
    if not name or len(name) > 128 or name in (".", "..") or name.startswith(".") \
            or any(c in name for c in "/\\\x00") or not name.isprintable():
        raise AccessError("a tool's file name is a plain name (no folder, not hidden, at most 128 characters)")
    return name


class Tools:
    def __init__(self, db: sa.Engine) -> None:
        self._db = db

    def add(self, name: str, file_name: str, content: bytes, expected_sha256: str, by: str, now: float) -> Tool:
        """A new tool. `expected_sha256` (hex, optional): the checksum the administrator has
        from the tool's publisher; the file is refused if it does not match."""
        name = name.strip()
        if not name or len(name) > 128:
            raise AccessError("a tool's name has 1 to 128 characters")
        file_name = check_file_name(file_name)
        if not content:
            raise AccessError("the file is empty")
        if len(content) > MAX_TOOL_BYTES:
            raise AccessError(f"a tool has at most {MAX_TOOL_BYTES // 1024} KiB")
        sha256 = hashlib.sha256(content).hexdigest()
        expected = expected_sha256.strip().lower()
        if expected and expected != sha256:
            raise AccessError(f"the file's SHA-256 is {sha256}, not the checksum given")
        tool = Tool(new_id(), name, file_name, len(content), sha256, float(now), by)
        try:
            with self._db.begin() as db:
                db.execute(t_tools.insert().values(id=tool.id, name=name, file_name=file_name, size=tool.size,
                                                   sha256=sha256, content=content, created_at=tool.created_at,
                                                   created_by=by))
        except sa.exc.IntegrityError:
            raise AccessError(f"a tool named {name} exists already") from None
        return tool

    def list(self) -> list[Tool]:
        columns = [c for c in t_tools.c if c.name != "content"]
        with self._db.connect() as db:
            return [_tool(r) for r in db.execute(sa.select(*columns).order_by(t_tools.c.name))]

    def get(self, tool_id: str) -> Tool | None:
        columns = [c for c in t_tools.c if c.name != "content"]
        with self._db.connect() as db:
            row = db.execute(sa.select(*columns).where(t_tools.c.id == tool_id)).first()
        return _tool(row) if row is not None else None

    def content(self, tool_id: str) -> bytes | None:
        with self._db.connect() as db:
            return db.execute(sa.select(t_tools.c.content).where(t_tools.c.id == tool_id)).scalar()

    def delete(self, tool_id: str) -> Tool | None:
        tool = self.get(tool_id)
        if tool is not None:
            with self._db.begin() as db:
                db.execute(t_tools.delete().where(t_tools.c.id == tool_id))
        return tool
