"""What every actor of the tree shares: a `tell` that tolerates a dead receiver."""

from __future__ import annotations

import logging
from typing import Any

import pykka

log = logging.getLogger(__name__)


def send(ref: Any, message: Any) -> bool:
    """Tell `message` to `ref`; False if the receiver has already stopped. Stopping races with
    messages in flight everywhere in a tree, and a late message to a stopped actor is not a
    failure of the sender."""
    if ref is None:
        return False
    try:
        ref.tell(message)
        return True
    except pykka.ActorDeadError:
        log.debug("%s dropped: %s has stopped", type(message).__name__, ref)
        return False


def describe_failure(exception_value: BaseException | None) -> str:
    """A short reason for a client or an audit row; the traceback goes to the log only."""
    return type(exception_value).__name__ if exception_value is not None else "unknown error"


def reply(reply_to: Any, message: Any) -> None:
    """Answer through a message's `reply_to`, if it has one. A client's broken reply channel
    is the client's problem, never the actor's."""
    if reply_to is None:
        return
    try:
        reply_to(message)
    except Exception:
        log.exception("reply_to failed for %s", type(message).__name__)
