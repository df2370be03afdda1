"""What ended one connection attempt's task: the first real failure to report, and the
cancellation that must go on up (trio's structured concurrency), from an exception or an
exception group of a nursery. Shared by the endpoint connections' attempt tasks."""

from __future__ import annotations

from typing import Callable


def leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in leaves(sub)]
    return [exc]


def split_cancelled(exc: BaseException, prefer: Callable[[BaseException], bool] = lambda e: False,
                    ) -> tuple[BaseException | None, BaseException | None]:
    """(what must propagate, the failure to report: the first that `prefer`s, else the first)."""
    failures = [leaf for leaf in leaves(exc) if isinstance(leaf, Exception)]
    others = [leaf for leaf in leaves(exc) if not isinstance(leaf, Exception)]
    failures.sort(key=lambda e: not prefer(e))
    failure = failures[0] if failures else None
    if not others:
        return None, failure
    if isinstance(exc, BaseExceptionGroup):
        propagate, _ = exc.split(lambda e: not isinstance(e, Exception))
        return propagate, failure
    return exc, None
