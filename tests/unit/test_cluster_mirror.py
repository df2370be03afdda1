"""A node's one subscription to a session run elsewhere (dashboard/services/cluster.py `_Mirror`):
frames the bus lost on the way never leave a viewer's screen wrong; its viewers resync."""

from __future__ import annotations

from dashboard.services.cluster import _Mirror, _Viewer
from engine import OutboundQueue
from engine.messages import Frame, Keyframe, Resync


def _frames(items):
    return [frame.data for item in items if item.kind == "data" for frame in item.value]


def test_frames_in_order_reach_the_viewers_that_have_their_keyframe():
    keyed, waiting = OutboundQueue(), OutboundQueue()
    mirror = _Mirror("s1")
    mirror.viewers = {"t1": _Viewer(keyed, keyed=True), "t2": _Viewer(waiting)}
    for seq, data in enumerate((b"a", b"b", b"c"), start=1):
        mirror.frame(Frame(data), seq)
    assert _frames(keyed.take()) == [b"a", b"b", b"c"] and not keyed.owes_resync
    assert waiting.take() == []  # its keyframe covers these
    assert mirror.frames_lost == 0


def test_a_gap_in_the_numbers_makes_every_viewer_here_owe_a_resync():
    asked = []
    queue = OutboundQueue()
    queue.attach(lambda: asked.append("keyframe"))
    mirror = _Mirror("s1")
    mirror.viewers = {"t1": _Viewer(queue, keyed=True)}
    mirror.frame(Frame(b"a"), 1)
    mirror.frame(Frame(b"b"), 2)
    mirror.frame(Frame(b"e"), 5)  # 3 and 4 never arrived (an outage of the bus)
    mirror.frame(Frame(b"f"), 6)
    assert mirror.frames_lost == 2
    assert queue.owes_resync
    assert _frames(queue.take()) == []  # a, b pending were dropped with the rest: a keyframe replaces them
    assert asked == ["keyframe"]  # asked of the owning node once, when the sender came for more
    queue.keyframe(Keyframe(b"screen", 80, 24), resync=True)
    items = queue.take()
    assert [item.kind for item in items] == ["event", "keyframe"]
    assert items[0].value == Resync(dropped=6)  # a, b dropped; 3, 4 lost; e, f refused while owed
    mirror.frame(Frame(b"g"), 7)
    assert _frames(queue.take()) == [b"g"]
