"""Reading query values: what a page or the API accepts in a query string, with a clear
refusal (`BadInput`, naming the parameter) for anything else; and times written back for
people and for programs.

Times are ISO 8601 (``2024-05-01``, ``2024-05-01T12:30``, with an optional ``Z`` or offset; a
time without a zone is UTC) or seconds since the epoch. A date alone as an upper bound covers the
whole of that day.
"""

from __future__ import annotations

import math
import re
from datetime import date, datetime, timedelta, timezone
from typing import Mapping

MAX_TEXT = 128  # a free-text filter (a name, an id)
_NUMBER = re.compile(r"^[0-9]+(\.[0-9]+)?$")


class BadInput(ValueError):
    """A parameter that cannot be used; the message says which and why, for the person asking."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


def parse_time(text: str | None, name: str, *, end_of_day: bool = False) -> float | None:
    """Seconds since the epoch from an ISO 8601 date or date-time (UTC unless it says
    otherwise) or a number of seconds; None for an empty value. `end_of_day`: a date alone
    means the end of that day (for an exclusive upper bound)."""
    if text is None:
        return None
    text = text.strip()
    if not text:
        return None
    if len(text) > 40:
        raise BadInput(name, "not a date or time")
    if _NUMBER.match(text):
        value = float(text)
        if not math.isfinite(value) or value > 253402300799:  # 9999-12-31T23:59:59Z
            raise BadInput(name, "out of range")
        return value
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
            if end_of_day:
                moment += timedelta(days=1)
            return moment.timestamp()
        # "...T12:00 02:00": a "+" that a query string turned into a space
        text = re.sub(r"(T[0-9:.]+) ([0-9]{2}:?[0-9]{2})$", r"\1+\2", text)
        moment = datetime.fromisoformat(text.replace(" ", "T", 1))
    except (ValueError, OverflowError):
        raise BadInput(name, f"{text!r} is not a date (YYYY-MM-DD), a date and time "
                             "(YYYY-MM-DDTHH:MM[:SS][Z|+HH:MM]) or seconds since 1970") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def utc_text(at: float | None) -> str:
    """``2024-05-01 12:30:05 UTC``: for people."""
    if at is None:
        return ""
    return datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso_utc(at: float | None) -> str | None:
    """``2024-05-01T12:30:05.123456Z``: for programs."""
    if at is None:
        return None
    return datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_int(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None or raw.strip() == "":
        return default
    raw = raw.strip()
    if not re.fullmatch(r"-?[0-9]{1,12}", raw):
        raise BadInput(name, "a whole number")
    value = int(raw)
    if not low <= value <= high:
        raise BadInput(name, f"between {low} and {high}")
    return value


def text_param(params: Mapping[str, str], name: str) -> str | None:
    """A short printable value, or None for an empty one."""
    value = (params.get(name) or "").strip()
    if not value:
        return None
    if len(value) > MAX_TEXT or any(ord(c) < 32 for c in value):
        raise BadInput(name, f"at most {MAX_TEXT} printable characters")
    return value
