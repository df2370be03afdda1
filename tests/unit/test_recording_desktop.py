"""The desktop recording's file (engine/recording_desktop.py): the catch-up of a seek without what
is painted over shows the same picture; a file cut by a crash, or not one, is read or refused
with a reason."""

from __future__ import annotations

import io

import numpy as np
import pytest

from engine.display import DisplayModel
from engine.messages import DisplayCopy, DisplayFill, DisplayPixels, DisplaySize, DisplayUpdate
from engine.recording_desktop import DesktopEncoder, coalesce, desktop_start, read_desktop
from engine.recordings import CorruptRecording, RecordingMeta
from protocols.rfb_browser import FrameDecoder

def FIRST(data: bytes) -> int:
    """The offset of the record after the header."""
    return 8 + 13 + int.from_bytes(data[17:21], "big")


META = RecordingMeta("s1", "e1", "desk", "vnc", "u1", "alice", 0.0)


def picture(stream: bytes) -> np.ndarray:
    decoder = FrameDecoder()
    decoder.feed(stream)
    return decoder.framebuffer


def random_updates(model: DisplayModel, rng: np.random.Generator, count: int) -> list[bytes]:
    frames = []
    for _ in range(count):
        kind = rng.integers(3)
        w, h = int(rng.integers(8, 120)), int(rng.integers(8, 90))
        x, y = int(rng.integers(0, 320 - w)), int(rng.integers(0, 240 - h))
        if kind == 0:
            item = DisplayFill(x, y, w, h, tuple(int(c) for c in rng.integers(0, 256, 3)))
        elif kind == 1:
            rgbx = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
            rgbx[:, :, 3] = 0
            item = DisplayPixels(x, y, w, h, rgbx)
        else:
            item = DisplayCopy(x, y, w, h, int(rng.integers(0, 320 - w)), int(rng.integers(0, 240 - h)))
        frame = model.update(DisplayUpdate((item,)))
        if frame is not None:
            frames.append(frame.data)
    return frames


@pytest.mark.parametrize("seed", range(5))
def test_the_coalesced_catch_up_shows_the_same_picture_for_fewer_bytes(seed):
    rng = np.random.default_rng(seed)
    model = DisplayModel()
    model.update(DisplayUpdate((DisplaySize(320, 240),)))
    random_updates(model, rng, 20)
    stream = model.keyframe().data + b"".join(random_updates(model, rng, 300))
    coalesced = coalesce(stream)
    assert np.array_equal(picture(coalesced), picture(stream))
    assert picture(stream).any()
    assert len(coalesced) < len(stream)


def test_regions_repainted_many_times_cost_their_last_paint():
    """As the benchmark's busy desktop: four regions repainted 100 times between two keyframes."""
    rng = np.random.default_rng(7)
    model = DisplayModel()
    model.update(DisplayUpdate((DisplaySize(640, 480),)))
    stream = bytearray(model.keyframe().data)
    for _ in range(100):
        for x, y in ((0, 0), (320, 0), (0, 240), (320, 240)):
            rgbx = rng.integers(0, 256, (120, 160, 4), dtype=np.uint8)
            stream += model.update(DisplayUpdate((DisplayPixels(x + 40, y + 40, 160, 120, rgbx),))).data
    coalesced = coalesce(bytes(stream))
    assert np.array_equal(picture(coalesced), picture(bytes(stream)))
    assert len(coalesced) < len(stream) / 50


def test_a_size_change_after_the_start_leaves_the_catch_up_as_it_is():
    model = DisplayModel()
    model.update(DisplayUpdate((DisplaySize(64, 48),)))
    stream = model.keyframe().data + model.update(DisplayUpdate((DisplaySize(80, 60),))).data
    assert coalesce(stream) == stream


def write(encoder: DesktopEncoder, model: DisplayModel, seconds: int) -> bytes:
    out = encoder.header()
    model.update(DisplayUpdate((DisplaySize(64, 48),)))
    for second in range(seconds):
        if second % 10 == 0:
            out += encoder.keyframe(second, model.keyframe())
        frame = model.update(DisplayUpdate((DisplayFill(0, 0, 64, 48, (second, 0, 0)),)))
        out += encoder.output(second + 0.5, frame.data)
    out += encoder.marker(seconds, "session ended (terminated)")
    return out + encoder.trailer()


def test_a_file_cut_by_a_crash_is_read_up_to_its_last_whole_record():
    data = write(DesktopEncoder(META), DisplayModel(), 35)
    closed = read_desktop(io.BytesIO(data))
    assert closed.indexed and [t for t, _ in closed.keyframes] == [0, 10, 20, 30]
    cut = data[:len(data) - 60]  # no index, and the last record cut in the middle
    walked = read_desktop(io.BytesIO(cut))
    assert not walked.indexed and walked.truncated and walked.keyframes == closed.keyframes
    start = desktop_start(io.BytesIO(cut), walked, 25.7)
    assert tuple(picture(start.catch_up)[0, 0]) == (25, 0, 0)


@pytest.mark.parametrize("damage, says", [
    (lambda d: b"NOTCSRFB" + d[8:], "bad magic"),
    (lambda d: d[:8] + b"Z" + d[9:], "not a header"),
    (lambda d: d[:FIRST(d)] + b"\xff" * 13 + d[FIRST(d) + 13:], "is not one"),
])
def test_a_file_that_is_not_a_desktop_recording_is_refused_with_where(damage, says):
    data = write(DesktopEncoder(META), DisplayModel(), 12)
    with pytest.raises(CorruptRecording, match=says):
        recording = read_desktop(io.BytesIO(damage(data)), len(data) - 40)  # walk: no index
        desktop_start(io.BytesIO(damage(data)), recording, 5)
