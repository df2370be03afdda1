"""Counting repeated refusals instead of writing a row for each (the audit store's flood guard).

A client that is refused over and over (a viewer typing, a script reconnecting in a loop)
must not write thousands of audit rows a second, and no refusal may go uncounted. So a
refusal (any event whose kind ends in ``_refused``) is *repeated* when an earlier one had the
same kind, session, actor and detail (all of it but ``size``) less than ``interval`` seconds
before, and then:

- the first refusal of a kind gets its own row at once, as before;
- the repeats are counted, and written as one row of the same kind and detail, plus
  ``count`` (how many refusals the row stands for), ``first_at`` and ``last_at`` (the first
  and last of them) and, if they had sizes, ``size`` (their total). Its ``at`` is ``last_at``;
- that row is written when the interval ends; earlier when the same actor gets any other row
  (anything but a repeat: so each actor's rows stay in the order things happened), before its
  session's end, on `Flush` and when the store stops;
- while repeats keep coming, the next interval counts on; an interval without one ends the
  window, and the next refusal of that kind gets its own row again.

So the rows of a kind add up to every refusal: ``sum(detail.get("count", 1))``.

`RefusalCounter` is pure bookkeeping on the store's clock; the store writes what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.db import canonical_json, plain
from engine.messages import AuditEvent

_SUMMED = "size"  # the one detail field that differs between repeats; summed, not compared


def is_refusal(kind: str) -> bool:
    return kind.endswith("_refused")


@dataclass(slots=True)
class _Window:
    event: AuditEvent  # the row that opened the window (its kind, session, actor, detail)
    ends_at: float
    count: int = 0  # repeats since the last row
    first_at: float = 0.0
    last_at: float = 0.0
    size: int | None = None


class RefusalCounter:
    """Per (kind, session, actor, detail without size): which refusals are repeats, and the rows
    that count them. `interval` 0 turns counting off: every refusal is its own row."""

    def __init__(self, interval: float) -> None:
        self.interval = max(0.0, float(interval))
        self._windows: dict[tuple[Any, ...], _Window] = {}

    def offer(self, event: AuditEvent, now: float) -> list[AuditEvent]:
        """The rows to write now for `event`, in order (none if it was counted)."""
        if self.interval <= 0:
            return [event]
        actor = (event.actor_id, event.actor_name)
        if not is_refusal(event.kind):
            return [*self.close(actor=actor), event]
        key = (event.kind, event.session_id, event.actor_id, event.actor_name,
               canonical_json(plain({k: v for k, v in event.detail if k != _SUMMED})))
        window = self._windows.get(key)
        if window is None:
            written = [*self.close(actor=actor), event]
            self._windows[key] = _Window(event, now + self.interval)
            return written
        if window.count == 0:
            window.first_at = event.at
        window.count += 1
        window.last_at = event.at
        size = dict(event.detail).get(_SUMMED)
        if isinstance(size, int) and not isinstance(size, bool):
            window.size = (window.size or 0) + size
        return []

    def due(self, now: float) -> list[AuditEvent]:
        """The rows of the windows whose interval has ended. A window with repeats counts on for
        another interval; one without any ends."""
        rows = []
        for key, window in list(self._windows.items()):
            if window.ends_at > now:
                continue
            if window.count:
                rows.append(self._row(window))
                window.ends_at = now + self.interval
            else:
                del self._windows[key]
        return rows

    def flush(self) -> list[AuditEvent]:
        """Every pending count as a row now (a Flush, a stop); the windows go on."""
        return self._close(lambda window: True)

    def close(self, *, actor: tuple[str | None, str | None] | None = None,
              session_id: str | None = None) -> list[AuditEvent]:
        """The pending counts of one actor (before that actor's next other row) or of one
        session (before its end), as rows now; the windows go on."""
        return self._close(lambda w: (actor is not None and (w.event.actor_id, w.event.actor_name) == actor)
                           or (session_id is not None and w.event.session_id == session_id))

    def next_due(self) -> float | None:
        return min((w.ends_at for w in self._windows.values()), default=None)

    @property
    def pending(self) -> int:
        """Refusals counted and not yet written."""
        return sum(w.count for w in self._windows.values())

    def _close(self, which: Any) -> list[AuditEvent]:
        rows = [self._row(w) for w in self._windows.values() if w.count and which(w)]
        rows.sort(key=lambda row: row.at)
        return rows

    @staticmethod
    def _row(window: _Window) -> AuditEvent:
        detail = {k: v for k, v in window.event.detail if k != _SUMMED}
        detail.update(count=window.count, first_at=window.first_at, last_at=window.last_at)
        if window.size is not None:
            detail[_SUMMED] = window.size
        e = window.event
        row = AuditEvent(e.kind, window.last_at, e.session_id, e.actor_id, e.actor_name, tuple(sorted(detail.items())))
        window.count, window.size = 0, None
        return row
