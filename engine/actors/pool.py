"""Actors without a thread each: `PooledActor` is a pykka actor that a small pool of worker
threads (`ActorPool`, owned by the Engine) runs, one message at a time and in order.

pykka's `Actor` leaves three things to a runtime: the inbox (`_create_actor_inbox`), the future
that `ask` returns (`_create_future`) and the loop that runs the actor (`_start_actor_loop`).
`ThreadingActor` answers with a `queue.Queue`, a `ThreadingFuture` and a thread per actor. Here:

- the inbox is a `Mailbox`: a deque whose first message puts the actor on the pool's run queue.
  An actor is on the run queue at most once (its `scheduled` flag), so no two workers ever hold
  the same actor: its messages are handled in order and never two at once;
- a worker takes an actor from the run queue and handles at most `slice_messages` of its
  messages (one *slice*), then puts it at the back of the run queue if more are waiting. A
  session flooding output therefore takes one slice per turn, and every other actor with mail
  gets its turn before the flood's next slice (round robin over the actors that have work);
- the future is pykka's `ThreadingFuture` (callers outside the pool block on it as before),
  except that waiting on an unresolved one *on a worker* raises `BlockedWorker`: with a few
  workers, an actor that waits for another actor can wait for ever;
- each message goes through pykka's own `_handle_receive`, `_handle_failure`, `on_failure` and
  `_stop`, so `on_start`, `on_stop`, `on_failure`, `tell`, `ask`, `stop` and the proxies behave
  as for a `ThreadingActor`. One difference: a `tell` that races with the actor's end raises
  `ActorDeadError`, where a `ThreadingActor` would leave the message unread in a dead queue.

Start and stop cost O(1). A pooled actor is registered in its pool (a dict by URN), not in
pykka's global `ActorRegistry`, whose `unregister` is a list removal (linear in the number of
live actors); and it starts no thread, so CPython's per-thread-start bookkeeping
(`threading._maintain_shutdown_locks`, linear in the number of threads) is paid once per worker.

`Actor.start()` puts the new actor on the pool of the worker that calls it: a session's children
share their session's pool. Outside a worker, `start_on(pool, ...)` names the pool.

An actor whose work blocks (a database commit, a lock held by I/O) must not be a PooledActor:
it would hold a worker from every other actor while it waits. Such an actor stays a
`pykka.ThreadingActor` with its own thread (the StoreActor, engine/store.py).
"""

from __future__ import annotations

import collections
import logging
import queue
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Self

import pykka

from engine.errors import BlockedWorker, EngineNotRunning

if TYPE_CHECKING:
    from pykka._envelope import Envelope  # what pykka's inbox protocol carries

log = logging.getLogger(__name__)

SLICE_MESSAGES = 32  # messages an actor handles before it yields its worker to the next actor
WORKERS = 4


_worker = threading.local()  # .pool on the pool's own worker threads


class Mailbox:
    """A pooled actor's inbox (pykka's `ActorInbox`: `put`, `get`, `empty`). Safe from any thread."""

    __slots__ = ("_envelopes", "_lock", "_actor", "_scheduled", "_closed")

    def __init__(self) -> None:
        self._envelopes: collections.deque[Envelope[Any]] = collections.deque()
        self._lock = threading.Lock()
        self._actor: PooledActor | None = None  # set when the actor is admitted to its pool
        self._scheduled = False
        self._closed = False

    def put(self, envelope: Envelope[Any], /) -> None:
        with self._lock:
            actor = self._actor
            if not self._closed:
                self._envelopes.append(envelope)
                if self._scheduled or actor is None:
                    return
                self._scheduled = True
        if actor is None:  # closed: the actor has ended
            _refuse(envelope)
            return
        actor._pool._ready.put(actor)

    def get(self) -> Envelope[Any]:
        """The next message, for the actor's own worker (and pykka's teardown)."""
        return self._envelopes.popleft()

    def empty(self) -> bool:
        return not self._envelopes

    # --- for the pool ---------------------------------------------------------------------------

    def _admit(self, actor: PooledActor, first_slice: bool) -> bool:
        """Bind the mailbox to its actor; True if the actor is to be scheduled now: for its
        on_start, or for messages told to it before it was admitted."""
        with self._lock:
            self._actor = actor
            self._scheduled = first_slice or bool(self._envelopes)
            return self._scheduled

    def _next(self) -> Envelope[Any] | None:
        try:
            return self._envelopes.popleft()
        except IndexError:
            return None

    def _yield(self) -> bool:
        """After a slice: True if the actor stays scheduled (it has more mail), else unschedule it.
        Under the lock, so that a `put` either sees the flag still set or sets it itself."""
        with self._lock:
            if self._envelopes:
                return True
            self._scheduled = False
            return False

    def _close(self) -> None:
        """The actor has stopped: later messages are refused, what is left goes to the teardown."""
        with self._lock:
            self._closed = True
            self._actor = None


def _refuse(envelope: Envelope[Any]) -> None:
    """A message for an actor that has already ended: an `ask` gets ActorDeadError (a stop gets
    False, as pykka answers a stop of a dead actor), a `tell` raises it to its sender."""
    error = pykka.ActorDeadError("the actor has stopped")
    if envelope.reply_to is None:
        raise error
    try:
        envelope.reply_to.set_exception(exc_info=(pykka.ActorDeadError, error, None))
    except queue.Full:
        pass


class PoolFuture(pykka.ThreadingFuture[Any]):
    """pykka's ThreadingFuture, which refuses to block a pool worker."""

    def get(self, *, timeout: float | None = None) -> Any:
        if self._result is None and self._get_hook is None and getattr(_worker, "pool", None) is not None:
            raise BlockedWorker("an actor may not wait for a reply on a pool worker; use reply_to")
        return super().get(timeout=timeout)


class PooledActor(pykka.Actor):
    """A pykka actor run by an ActorPool. Subclass it as you would `pykka.ThreadingActor`."""

    _pool: ActorPool
    _started: bool = False

    @staticmethod
    def _create_actor_inbox() -> Mailbox:
        return Mailbox()

    @staticmethod
    def _create_future() -> PoolFuture:
        return PoolFuture()

    @classmethod
    def start(cls, *args: Any, **kwargs: Any) -> pykka.ActorRef[Self]:
        """Start on the pool of the calling worker (an actor starting its children)."""
        pool = getattr(_worker, "pool", None)
        if pool is None:
            raise EngineNotRunning(f"{cls.__name__}.start() outside the actor pool: use start_on(pool, ...)")
        return cls.start_on(pool, *args, **kwargs)

    @classmethod
    def start_on(cls, pool: ActorPool, *args: Any, **kwargs: Any) -> pykka.ActorRef[Self]:
        actor = cls(*args, **kwargs)
        assert actor.actor_ref is not None, "Actor.__init__() was not called"
        actor._pool = pool
        actor._start_actor_loop()
        return actor.actor_ref

    def _start_actor_loop(self) -> None:
        self._pool._admit(self)

    def nothing_waiting(self) -> bool:
        """No message waits for a worker: none in this actor's inbox, and no other actor of the
        pool on the run queue. The moment for optional work, which must never delay a message."""
        return self.actor_inbox.empty() and self._pool._ready.empty()

    def _run_slice(self, budget: int) -> None:
        """Handle up to `budget` messages, on a worker. pykka's `_actor_loop`, one slice at a time."""
        inbox: Mailbox = self.actor_inbox  # type: ignore[assignment]
        stopped = self.actor_stopped
        try:
            if not self._started:
                self._started = True
                self._actor_loop_setup()  # on_start; a failure there stops the actor without on_failure
            for _ in range(budget):
                if stopped.is_set():
                    break
                envelope = inbox._next()
                if envelope is None:
                    break
                self._handle_envelope(envelope)
        except BaseException:
            # pykka stops every actor when one raises a BaseException (SystemExit, ...): so does
            # the pool, for its own actors, without waiting, and the worker goes on.
            log.error("%r in %s: stopping every actor of its pool", sys.exc_info()[1], self)
            try:
                self._stop()
            except BaseException:
                stopped.set()
            self._pool.stop_actors()
        if stopped.is_set():
            inbox._close()
            self._actor_loop_teardown()  # answers every ask still in the inbox
            self._pool._release(self)
        elif inbox._yield():
            self._pool._ready.put(self)

    def _handle_envelope(self, envelope: Envelope[Any]) -> None:
        """As in pykka's `Actor._actor_loop_running` (pykka 4.5), for one envelope."""
        try:
            response = self._handle_receive(envelope.message)
            if envelope.reply_to is not None:
                envelope.reply_to.set(response)
        except Exception:
            if envelope.reply_to is not None:
                log.info("exception returned from %s to its caller", self, exc_info=True)
                envelope.reply_to.set_exception()
            else:
                self._handle_failure(*sys.exc_info())
                try:
                    self.on_failure(*sys.exc_info())
                except Exception:
                    self._handle_failure(*sys.exc_info())


class ActorPool:
    """The worker threads that run PooledActors, the run queue, and the actors alive on it."""

    _pools = 0

    def __init__(self, workers: int = WORKERS, slice_messages: int = SLICE_MESSAGES) -> None:
        if workers < 1 or slice_messages < 1:
            raise ValueError("an actor pool needs at least one worker and a slice of one message")
        ActorPool._pools += 1
        self.name = f"cosession-actors-{ActorPool._pools}"
        self._slice = slice_messages
        self._ready: queue.SimpleQueue[PooledActor | None] = queue.SimpleQueue()
        self._actors: dict[str, PooledActor] = {}
        self._lock = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{self.name}-{n}") for n in range(workers)]
        for thread in self._threads:
            thread.start()

    # --- what tests and the engine read -----------------------------------------------------

    @property
    def threads(self) -> list[threading.Thread]:
        return [t for t in self._threads if t.is_alive()]

    def actors(self) -> list[pykka.ActorRef[Any]]:
        """The actors registered on the pool: started and not yet ended."""
        with self._lock:
            return [actor.actor_ref for actor in self._actors.values()]

    def scheduled(self) -> int:
        """Actors waiting on the run queue for a worker (a test's proof that nothing is left)."""
        return self._ready.qsize()

    # --- lifecycle --------------------------------------------------------------------------

    def stop_actors(self) -> None:
        """Tell every actor on the pool to stop, without waiting."""
        for ref in self.actors():
            ref.stop(block=False)

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop every actor still on the pool, wait for them to end, then end the workers.
        False (and logged) if something did not end within `timeout`. Idempotent."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._closed = True  # nothing new starts on a pool that is stopping
        self.stop_actors()
        with self._lock:
            ended = self._lock.wait_for(lambda: not self._actors, timeout)
            left = [str(actor) for actor in self._actors.values()]
        if not ended:
            log.error("%d actors did not stop within %.0f s: %s", len(left), timeout, ", ".join(left[:10]))
        for _ in self._threads:
            self._ready.put(None)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        stuck = self.threads
        if stuck:
            log.error("actor pool workers still busy after stop: %s", ", ".join(t.name for t in stuck))
        return ended and not stuck

    # --- for PooledActor --------------------------------------------------------------------

    def _admit(self, actor: PooledActor) -> None:
        with self._lock:
            if self._closed:
                raise EngineNotRunning(f"the actor pool is stopping; {type(actor).__name__} not started")
            self._actors[actor.actor_urn] = actor
        # An actor without an on_start of its own waits for its first message: thousands of
        # participants joining cost no extra turn each.
        has_on_start = type(actor).on_start is not pykka.Actor.on_start
        actor._started = not has_on_start
        if actor.actor_inbox._admit(actor, has_on_start):  # type: ignore[attr-defined]
            self._ready.put(actor)

    def _release(self, actor: PooledActor) -> None:
        with self._lock:
            self._actors.pop(actor.actor_urn, None)
            if not self._actors:
                self._lock.notify_all()

    def _work(self) -> None:
        _worker.pool = self
        budget = self._slice
        ready = self._ready.get
        while (actor := ready()) is not None:
            try:
                actor._run_slice(budget)
            except BaseException:  # a bug of the pool itself: log it, keep the worker for everyone else
                log.exception("actor pool failed to run %s", actor)
