"""engine/refusals.py: repeated refusals become one counted row per interval, and every refusal
is counted."""

from __future__ import annotations

from engine.messages import AuditEvent, User
from engine.refusals import RefusalCounter

BOB, CAROL = User("bob", "Bob"), User("carol", "Carol")


def refused(at, who=BOB, kind="input_refused", session="s1", **detail):
    detail = {"participant": "p2", "reason": "not_controller", **detail}
    return AuditEvent.make(kind, at, session, who, **detail)


def detail(row):
    return dict(row.detail)


def counted(rows):
    return sum(detail(r).get("count", 1) for r in rows)


def test_the_first_refusal_is_written_at_once_and_repeats_are_counted_into_one_row():
    counter = RefusalCounter(10.0)
    first = refused(100.0, size=3)
    assert counter.offer(first, 100.0) == [first]
    for n in range(1, 100):
        assert counter.offer(refused(100.0 + n / 100, size=2), 100.0 + n / 100) == []
    assert counter.pending == 99
    assert counter.next_due() == 110.0
    assert counter.due(109.9) == []
    (row,) = counter.due(110.0)
    assert (row.kind, row.session_id, row.actor_id, row.actor_name, row.at) == (
        "input_refused", "s1", "bob", "Bob", 100.99)
    assert detail(row) == {"participant": "p2", "reason": "not_controller", "count": 99, "first_at": 100.01,
                           "last_at": 100.99, "size": 198}
    assert counter.pending == 0


def test_a_steady_flood_writes_one_row_per_interval_and_a_quiet_interval_ends_the_window():
    counter, rows = RefusalCounter(10.0), []
    t = 0.0
    while t < 60.0:  # ten refusals a second for a minute
        rows += counter.offer(refused(t), t)
        rows += counter.due(t)
        t = round(t + 0.1, 1)
    rows += counter.due(70.0)
    assert len(rows) == 1 + 6  # the first, then one per interval
    assert counted(rows) == 600
    assert counter.due(80.0) == [] and counter.next_due() is None  # a quiet interval: the window ends
    again = refused(81.0)
    assert counter.offer(again, 81.0) == [again]  # the next one is a first again


def test_refusals_that_differ_are_counted_apart():
    counter = RefusalCounter(10.0)
    a, b = refused(1.0), refused(1.0, reason="too_large")
    c, d = refused(1.0, who=CAROL), refused(1.0, session="s2")
    e = refused(1.0, kind="message_refused")
    assert [counter.offer(x, 1.0) for x in (a, b, c, d, e)] == [[a], [b], [c], [d], [e]]
    assert counter.offer(refused(2.0, size=99), 2.0) == []  # size is not part of what repeats


def test_an_actors_other_row_comes_after_its_counted_refusals():
    counter = RefusalCounter(10.0)
    counter.offer(refused(1.0), 1.0)
    counter.offer(refused(2.0), 2.0)
    counter.offer(refused(3.0, who=CAROL), 3.0)
    counter.offer(refused(4.0, who=CAROL), 4.0)
    leave = AuditEvent.make("leave", 5.0, "s1", BOB, participant="p2")
    written = counter.offer(leave, 5.0)
    assert [(r.kind, r.actor_name, detail(r).get("count")) for r in written] == [
        ("input_refused", "Bob", 1), ("leave", "Bob", None)]
    assert counter.pending == 1  # Carol's waits for the interval
    # a first refusal of another kind is another row too: what was counted before comes first
    counter.offer(refused(6.0, who=CAROL), 6.0)
    other = refused(7.0, who=CAROL, reason="too_large")
    written = counter.offer(other, 7.0)
    assert [(r.actor_name, detail(r)["reason"], detail(r).get("count")) for r in written] == [
        ("Carol", "not_controller", 2), ("Carol", "too_large", None)]


def test_a_sessions_counts_close_before_its_end_and_flush_writes_every_count():
    counter = RefusalCounter(10.0)
    for t in (1.0, 2.0, 3.0):
        counter.offer(refused(t), t)
        counter.offer(refused(t, session="s2"), t)
    (row,) = counter.close(session_id="s1")
    assert (row.session_id, detail(row)["count"]) == ("s1", 2)
    (row,) = counter.flush()
    assert (row.session_id, detail(row)["count"]) == ("s2", 2)
    assert counter.flush() == [] and counter.pending == 0
    assert counter.offer(refused(4.0), 4.0) == []  # the window goes on after a flush


def test_only_refusals_are_counted_and_interval_zero_counts_nothing():
    counter = RefusalCounter(10.0)
    join = AuditEvent.make("join", 1.0, "s1", BOB, participant="p2")
    assert counter.offer(join, 1.0) == [join] and counter.offer(join, 1.0) == [join]
    off = RefusalCounter(0)
    rows = [row for t in range(5) for row in off.offer(refused(float(t)), float(t))]
    assert len(rows) == 5 and off.next_due() is None


def test_unhashable_details_are_keyed_by_their_canonical_text():
    counter = RefusalCounter(10.0)
    first = refused(1.0, fields=["a", "b"], where={"x": 1})
    assert counter.offer(first, 1.0) == [first]
    assert counter.offer(refused(2.0, fields=["a", "b"], where={"x": 1}), 2.0) == []
