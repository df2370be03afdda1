"""PooledActor on an ActorPool: pykka's actor model (tell, ask, on_start, on_stop, on_failure,
one message at a time, in order) without a thread per actor, with a bounded slice per turn."""

import threading

import pykka
import pytest

from engine.actors.pool import ActorPool, PooledActor
from engine.errors import BlockedWorker, EngineNotRunning

WAIT = 10.0  # a bound on waiting for the workers, never a wait for time to pass


@pytest.fixture
def pool():
    pool = ActorPool(workers=3, slice_messages=8)
    yield pool
    assert pool.stop(WAIT)
    assert pool.threads == [] and pool.actors() == [] and pool.scheduled() == 0


class Recorder(PooledActor):
    """Records what happens to it, and checks that it is never run by two workers at once."""

    def __init__(self, log=None):
        super().__init__()
        self.log = log if log is not None else []
        self._inside = threading.Lock()
        self.threads = set()

    def on_start(self):
        self.log.append(("start", threading.current_thread().name))

    def on_receive(self, message):
        if not self._inside.acquire(blocking=False):
            raise AssertionError("two workers ran the same actor at once")
        try:
            self.threads.add(threading.current_thread().name)
            match message:
                case ("fail", detail):
                    raise RuntimeError(detail)
                case ("wait", event):
                    assert event.wait(WAIT)
                case ("hold", entered, event):  # tell the test the worker is here, then wait
                    entered.set()
                    assert event.wait(WAIT)
                case ("start_child", reply):
                    reply(Recorder.start(self.log))
                case ("ask", ref):
                    return ref.ask("ping", timeout=WAIT)
                case ("exit",):
                    raise SystemExit(3)
                case "ping":
                    return "pong"
                case "threads":
                    return set(self.threads)
                case "nothing_waiting":
                    return self.nothing_waiting()
            self.log.append(message)
            return message
        finally:
            self._inside.release()

    def on_stop(self):
        self.log.append("stop")

    def on_failure(self, exception_type, exception_value, traceback):
        self.log.append(("failure", exception_type.__name__))


def test_tell_and_ask_run_on_a_worker_in_order_one_at_a_time(pool):
    ref = Recorder.start_on(pool)
    senders = [threading.Thread(target=lambda s=s: [ref.tell((s, n)) for n in range(2000)]) for s in range(4)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    assert ref.ask("ping", timeout=WAIT) == "pong"  # after every tell above: one inbox, in order
    log = ref.proxy().log.get(timeout=WAIT)
    assert log[0][0] == "start" and log[0][1].startswith(pool.name)  # on_start first, on a worker
    for s in range(4):
        assert [n for sender, n in log[1:] if sender == s] == list(range(2000))  # each sender's order kept
    assert ref.ask("threads", timeout=WAIT) <= {t.name for t in pool.threads}
    assert ref.stop(block=True, timeout=WAIT) is True
    assert log[-1] == "stop"


def test_a_busy_actor_yields_its_worker_after_one_slice():
    """One worker: a flooding actor handles `slice_messages` messages, then every other actor
    with mail gets its turn before its next slice."""
    one = ActorPool(workers=1, slice_messages=8)
    try:
        handled = []
        flood, quiet = Recorder.start_on(one, handled), Recorder.start_on(one, handled)
        assert flood.ask("ping", timeout=WAIT) == quiet.ask("ping", timeout=WAIT) == "pong"  # both idle
        entered, gate = threading.Event(), threading.Event()
        flood.tell(("hold", entered, gate))  # holds the only worker, so the rest queues up behind it
        assert entered.wait(WAIT)
        for n in range(1000):
            flood.tell(("flood", n))
        quiet.tell(("quiet", 0))
        gate.set()
        assert quiet.ask("ping", timeout=WAIT) == "pong"
        assert flood.ask("ping", timeout=WAIT) == "pong"
        order = [m for m in handled if isinstance(m, tuple) and m[0] in ("flood", "quiet")]
        assert order.index(("quiet", 0)) == 7  # the hold and 7 floods made the first slice
        assert [m[1] for m in order if m[0] == "flood"] == list(range(1000))
    finally:
        assert one.stop(WAIT)


def test_nothing_waiting_means_no_message_waits_on_the_whole_pool():
    """What the endpoint asks before optional work (parsing its screen model)."""
    one = ActorPool(workers=1)
    try:
        a, b = Recorder.start_on(one), Recorder.start_on(one)
        assert b.ask("ping", timeout=WAIT) == "pong"
        assert a.ask("nothing_waiting", timeout=WAIT) is True
        entered, gate = threading.Event(), threading.Event()
        a.tell(("hold", entered, gate))
        assert entered.wait(WAIT)
        behind_own = a.ask("nothing_waiting", block=False)  # another of a's messages waits behind it
        alone = a.ask("nothing_waiting", block=False)
        b.tell("x")  # b waits on the run queue for the only worker
        gate.set()
        assert behind_own.get(timeout=WAIT) is False and alone.get(timeout=WAIT) is False
        assert b.ask("ping", timeout=WAIT) == "pong"
        assert a.ask("nothing_waiting", timeout=WAIT) is True
    finally:
        assert one.stop(WAIT)


def test_an_actor_without_on_start_takes_no_turn_until_its_first_message():
    class Plain(PooledActor):
        def on_receive(self, message):
            return message

    one = ActorPool(workers=1)
    try:
        holder = Recorder.start_on(one)
        entered, gate = threading.Event(), threading.Event()
        holder.tell(("hold", entered, gate))
        assert entered.wait(WAIT)
        plain = Plain.start_on(one)
        assert one.scheduled() == 0
        Recorder.start_on(one)  # its on_start needs a turn
        assert one.scheduled() == 1
        reply = plain.ask("hello", block=False)
        assert one.scheduled() == 2
        gate.set()
        assert reply.get(timeout=WAIT) == "hello"
    finally:
        assert one.stop(WAIT)


def test_failure_and_stop_behave_as_pykka_says(pool):
    log = []
    ref = Recorder.start_on(pool, log)
    with pytest.raises(RuntimeError, match="for the caller"):
        ref.ask(("fail", "for the caller"), timeout=WAIT)  # an ask gets the exception; the actor lives
    assert ref.ask("ping", timeout=WAIT) == "pong"
    ref.tell(("fail", "unhandled"))  # a tell's exception is the actor's failure: on_failure, then it ends
    assert _wait_for(lambda: not ref.is_alive() and pool.actors() == [])
    assert log[-1] == ("failure", "RuntimeError") and "stop" not in log
    with pytest.raises(pykka.ActorDeadError):
        ref.tell("late")
    with pytest.raises(pykka.ActorDeadError):
        ref.ask("late", timeout=WAIT)
    assert ref.stop(block=True, timeout=WAIT) is False  # already ended


def test_asks_left_in_the_inbox_when_the_actor_stops_are_answered(pool):
    ref = Recorder.start_on(pool)
    gate = threading.Event()
    ref.tell(("wait", gate))
    stopping = ref.stop(block=False)
    late = ref.ask("ping", block=False)  # queued behind the stop
    gate.set()
    assert stopping.get(timeout=WAIT) is True
    with pytest.raises(pykka.ActorDeadError):
        late.get(timeout=WAIT)


def test_an_actor_that_waits_on_a_worker_fails_instead_of_blocking_the_pool(pool):
    log = []
    waiter, other = Recorder.start_on(pool, log), Recorder.start_on(pool)
    waiter.tell(("ask", other))
    assert _wait_for(lambda: not waiter.is_alive())
    assert ("failure", "BlockedWorker") in log
    assert other.ask("ping", timeout=WAIT) == "pong"  # nobody else noticed
    with pytest.raises(BlockedWorker):
        Recorder.start_on(pool).ask(("ask", other), timeout=WAIT)


def test_children_start_on_their_parents_pool_and_nothing_starts_outside_one(pool):
    parent = Recorder.start_on(pool)
    started = []
    parent.tell(("start_child", started.append))
    assert _wait_for(lambda: started)
    assert started[0].ask("ping", timeout=WAIT) == "pong"
    assert {ref.actor_urn for ref in pool.actors()} == {parent.actor_urn, started[0].actor_urn}
    with pytest.raises(EngineNotRunning):
        Recorder.start()


def test_actors_start_no_thread_and_stay_out_of_pykkas_global_registry(pool):
    threads = threading.active_count()
    refs = [Recorder.start_on(pool) for _ in range(2000)]
    assert all(ref.ask("ping", timeout=WAIT) == "pong" for ref in refs)
    assert threading.active_count() == threads
    assert pykka.ActorRegistry.get_all() == []  # whose unregister is a list removal
    assert len(pool.actors()) == 2000
    for ref in refs:
        ref.stop(block=False)
    assert _wait_for(lambda: pool.actors() == [])


def test_stopping_the_pool_stops_its_actors_and_ends_its_workers():
    pool = ActorPool(workers=2)
    log = []
    refs = [Recorder.start_on(pool, log) for _ in range(50)]
    assert all(ref.ask("ping", timeout=WAIT) == "pong" for ref in refs)
    assert pool.stop(WAIT)
    assert log.count("stop") == 50 and not any(ref.is_alive() for ref in refs)
    assert pool.threads == [] and pool.actors() == [] and pool.scheduled() == 0
    with pytest.raises(EngineNotRunning):
        Recorder.start_on(pool)
    assert pool.stop(WAIT)  # idempotent


def test_a_failing_on_start_ends_the_actor_without_on_failure(pool):
    class BadStart(Recorder):
        def on_start(self):
            raise RuntimeError("cannot start")

    log = []
    ref = BadStart.start_on(pool, log)
    assert _wait_for(lambda: not ref.is_alive() and pool.actors() == [])
    assert log == []  # pykka: an exception in on_start skips on_failure (and on_stop)


def test_a_base_exception_stops_every_actor_of_the_pool_and_the_workers_go_on(pool):
    log = []
    refs = [Recorder.start_on(pool, log) for _ in range(5)]
    refs[0].tell(("exit",))
    assert _wait_for(lambda: pool.actors() == [])
    assert log.count("stop") == 5
    assert Recorder.start_on(pool, log).ask("ping", timeout=WAIT) == "pong"  # the workers went on

    class ExitAtStart(Recorder):
        def on_start(self):
            raise SystemExit(4)

    ExitAtStart.start_on(pool, log)  # outside pykka's own handling of on_start
    assert _wait_for(lambda: pool.actors() == [])
    assert log.count("stop") == 7  # the one that raised, and the one started above


def _wait_for(predicate, timeout=WAIT):
    done = threading.Event()
    for _ in range(int(timeout * 1000)):
        if predicate():
            return True
        done.wait(0.001)
    return predicate()
