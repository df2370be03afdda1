"""The display model: applying decoded updates, encoding each once into frames that decode
alone from any keyframe (checked with protocols.rfb.FrameDecoder, which does what noVNC does)."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import simplejpeg

import engine.display
from engine.display import DisplayModel, encode_jpeg, encode_png
from engine.messages import (
    DisplayCopy, DisplayCursor, DisplayFill, DisplayJpeg, DisplayName, DisplayPixels, DisplayPointer, DisplaySize,
    DisplayUpdate,
)
from protocols.rfb import Encoding
from protocols.rfb_browser import FrameDecoder, decode_png


def rects_of(frame: bytes) -> list[tuple[int, int, int, int, int, int]]:
    """(x, y, w, h, encoding, tight control or -1) of each rectangle of one update."""
    decoder_view = memoryview(frame)
    count = struct.unpack_from(">H", frame, 2)[0]
    out, pos = [], 4
    for _ in range(count):
        x, y, w, h, enc = struct.unpack_from(">HHHHi", frame, pos)
        pos += 12
        control = -1
        if enc in (Encoding.TIGHT, Encoding.TIGHT_PNG):
            control = frame[pos]
            pos += 1
            if control >> 4 == 8:
                pos += 3
            else:
                length, shift = 0, 0
                for i in range(3):
                    b = decoder_view[pos]
                    pos += 1
                    length |= (b & (0x7F if i < 2 else 0xFF)) << shift
                    shift += 7
                    if i < 2 and not b & 0x80:
                        break
                pos += length
        elif enc == Encoding.COPY_RECT:
            pos += 4
        elif enc == Encoding.CURSOR:
            pos += w * h * 4 + (w + 7) // 8 * h
        elif enc == Encoding.EXTENDED_DESKTOP_SIZE:
            pos += 4 + 16 * frame[pos]
        out.append((x, y, w, h, enc, control))
    assert pos == len(frame)
    return out


def noise(h: int, w: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def text_like(h: int, w: int) -> np.ndarray:
    """Two colours in a pattern, as a terminal's text is: compresses well, must stay exact."""
    out = np.zeros((h, w, 3), np.uint8)
    out[::3, ::2] = (250, 250, 200)
    out[1::7, 1::5] = (20, 200, 40)
    return out


def gradient(h: int, w: int) -> np.ndarray:
    """Photo-like: smooth, many colours (JPEG's ground)."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), ((xx + yy) % 256)],
                    axis=2).astype(np.uint8)


def rgbx(rgb: np.ndarray) -> np.ndarray:
    out = np.zeros((*rgb.shape[:2], 4), np.uint8)
    out[:, :, :3] = rgb
    out.flags.writeable = False
    return out


def pixels(x, y, rgb, jpeg=None) -> DisplayPixels:
    return DisplayPixels(x, y, rgb.shape[1], rgb.shape[0], rgbx(rgb), jpeg)


def update(*items) -> DisplayUpdate:
    return DisplayUpdate(tuple(items))


def test_size_then_pixels_fill_copy_round_trip_exactly():
    model = DisplayModel()
    stream = FrameDecoder()
    text = text_like(40, 60)
    for item in (DisplaySize(320, 200), pixels(10, 20, text),
                 DisplayFill(100, 100, 50, 30, (1, 2, 3)), DisplayCopy(200, 10, 60, 40, 10, 20)):
        frame = model.update(update(item))
        stream.feed(frame.data)
    assert (model.width, model.height) == (320, 200)
    assert (stream.framebuffer == model.snapshot()).all()
    assert (model.snapshot()[10:50, 200:260] == text).all()
    assert (model.snapshot()[100:130, 100:150] == (1, 2, 3)).all()


def test_encodings_chosen_per_rectangle():
    model = DisplayModel()
    model.update(update(DisplaySize(512, 512)))
    solid = np.full((32, 32, 3), 7, np.uint8)
    jpeg = encode_jpeg(gradient(64, 64))
    frame = model.update(update(
        pixels(0, 0, solid),  # solid: a fill
        pixels(0, 64, text_like(40, 60)),  # few colours: PNG, lossless
        pixels(100, 100, noise(128, 128)),  # noise: PNG is no good, so JPEG
        pixels(300, 300, gradient(64, 64), jpeg),  # the endpoint's own JPEG
    ))
    kinds = [(enc, control >> 4) for *_, enc, control in rects_of(frame.data)]
    assert kinds == [(Encoding.TIGHT, 8), (Encoding.TIGHT_PNG, 10), (Encoding.TIGHT, 9), (Encoding.TIGHT, 9)]
    assert jpeg in frame.data  # passed on byte for byte, never encoded again
    assert model.rects_passed == 1


def test_no_state_spans_messages_any_suffix_after_a_keyframe_decodes():
    """A joiner starts at a keyframe and gets only the frames after it: its picture must equal
    the model's (lossless content exactly)."""
    model = DisplayModel()
    frames = [model.update(update(DisplaySize(256, 256))).data]
    for i in range(6):
        frames.append(model.update(update(pixels(i * 20, i * 30, text_like(40, 60)),
                                          DisplayCopy(0, 200, 50, 50, i * 20, i * 30))).data)
        if i == 2:
            keyframe = model.keyframe()
            later = len(frames)
    joiner = FrameDecoder()
    joiner.feed(keyframe.data)
    for data in frames[later:]:
        joiner.feed(data)
    assert (joiner.framebuffer == model.snapshot()).all()
    assert (keyframe.cols, keyframe.rows) == (256, 256)


def test_keyframe_is_rendered_once_per_version():
    model = DisplayModel()
    model.update(update(DisplaySize(300, 200), pixels(0, 0, text_like(40, 60))))
    first = model.keyframe()
    assert model.keyframe() is first and model.keyframes_rendered == 1
    model.update(update(DisplayFill(0, 0, 10, 10, (9, 9, 9))))
    assert model.keyframe() is not first and model.keyframes_rendered == 2


def test_keyframe_tiles_solid_areas_as_fills_and_decodes_within_jpeg_tolerance():
    model = DisplayModel()
    model.update(update(DisplaySize(1920, 1080)))
    picture = gradient(300, 400)
    model.update(update(pixels(100, 100, picture, encode_jpeg(picture, 90))))
    model.update(update(pixels(900, 500, text_like(200, 300))))
    keyframe = model.keyframe()
    rects = rects_of(keyframe.data)
    fills = sum(1 for *_, enc, control in rects if control >> 4 == 8)
    assert fills >= len(rects) * 0.75  # the empty desktop costs 3 bytes a tile
    assert len(keyframe.data) < 400_000
    joiner = FrameDecoder()
    joiner.feed(keyframe.data)
    diff = np.abs(joiner.framebuffer.astype(int) - model.snapshot().astype(int))
    assert diff.mean() < 1.0
    assert (joiner.framebuffer[500:700, 900:1200] == model.snapshot()[500:700, 900:1200]).all()


def test_large_rectangles_are_tiled():
    model = DisplayModel()
    model.update(update(DisplaySize(1024, 768)))
    frame = model.update(update(pixels(0, 0, text_like(768, 1024))))
    assert len(rects_of(frame.data)) == 4 * 3
    joiner = FrameDecoder()
    joiner.feed(model.keyframe().data)
    assert (joiner.framebuffer == model.snapshot()).all()


def arrow() -> DisplayCursor:
    """A 4x6 pointer, red where opaque, hotspot (1, 2)."""
    rgba = np.zeros((6, 4, 4), np.uint8)
    rgba[:, :, 0] = 200
    rgba[1:5, :, 3] = 255
    return DisplayCursor(1, 2, 4, 6, rgba.tobytes())


def with_pointer(model: DisplayModel) -> np.ndarray:
    """What the participants should show: the framebuffer with the pointer drawn in."""
    picture = model.snapshot()
    x, y = model.pointer[0] - 1, model.pointer[1] - 2
    for dy in range(1, 5):
        for dx in range(4):
            if 0 <= y + dy < picture.shape[0] and 0 <= x + dx < picture.shape[1]:
                picture[y + dy, x + dx] = (200, 0, 0)
    return picture


def test_the_pointer_is_drawn_where_the_controller_put_it():
    model = DisplayModel()
    viewer = FrameDecoder()
    feed = lambda *items: viewer.feed(model.update(update(*items)).data)  # noqa: E731
    feed(DisplaySize(64, 48, resizable=True), DisplayFill(0, 0, 64, 48, (0, 0, 90)))
    assert model.update(update(arrow())) is None  # a shape, but no position yet: nothing drawn
    feed(DisplayPointer(10, 10))
    assert (viewer.framebuffer == with_pointer(model)).all()
    feed(DisplayPointer(50, 40))  # moved: the old place is repainted, the new one drawn
    assert (viewer.framebuffer == with_pointer(model)).all()
    assert (model.snapshot() == (0, 0, 90)).all()  # the model's framebuffer never has the pointer
    feed(pixels(40, 30, text_like(16, 20)))  # painted under the pointer: the pointer is put back
    assert (viewer.framebuffer == with_pointer(model)).all()
    frame = model.update(update(DisplayCopy(0, 0, 20, 16, 40, 30)))  # copying from under it
    assert all(enc != Encoding.COPY_RECT for *_, enc, _ in rects_of(frame.data))
    viewer.feed(frame.data)
    assert (viewer.framebuffer == with_pointer(model)).all()
    joiner = FrameDecoder()
    joiner.feed(model.keyframe().data)
    assert (joiner.framebuffer == with_pointer(model)).all()
    kinds = [enc for *_, enc, _ in rects_of(model.keyframe().data)]
    assert kinds[0] == Encoding.EXTENDED_DESKTOP_SIZE and Encoding.CURSOR not in kinds


def test_a_pointer_that_jumps_far_repaints_two_small_boxes():
    model = DisplayModel()
    model.update(update(DisplaySize(1920, 1080), arrow(), DisplayPointer(5, 5)))
    frame = model.update(update(DisplayPointer(1900, 1070)))
    boxes = [(w, h) for _, _, w, h, _, _ in rects_of(frame.data)]
    assert len(boxes) == 2 and all(w <= 4 and h <= 6 for w, h in boxes)


def test_resize_keeps_the_overlap_and_nothing_outside_is_applied():
    model = DisplayModel()
    model.update(update(DisplaySize(100, 100), DisplayFill(0, 0, 100, 100, (5, 5, 5))))
    model.update(update(DisplaySize(50, 150)))
    assert model.snapshot().shape == (150, 50, 3)
    assert (model.snapshot()[:100] == 5).all() and (model.snapshot()[100:] == 0).all()
    # a rectangle outside the desktop changes nothing and writes nothing (the connection
    # refuses these first; the model never trusts it to)
    assert model.update(update(DisplayFill(40, 0, 20, 10, (9, 9, 9)))) is None
    assert model.update(update(DisplaySize(0, 10), DisplaySize(99999, 10))) is None
    assert model.update(update(DisplayName("desk"))) is None and model.name == "desk"


def test_before_the_endpoint_answers_a_keyframe_is_an_empty_update():
    assert DisplayModel().keyframe().data == b"\0\0\0\0"  # FramebufferUpdate, no rectangle


def test_png_round_trip_and_a_terminal_gets_no_display_updates():
    pixels = noise(17, 33)
    assert (decode_png(encode_png(pixels)) == pixels).all()
    with pytest.raises(TypeError):
        DisplayModel().feed(b"bytes")


def test_a_keyframe_re_encodes_only_the_tiles_painted_since_the_last():
    model = DisplayModel()
    model.update(update(DisplaySize(1024, 768), pixels(0, 0, text_like(768, 1024))))
    model.keyframe()
    encoded = model.rects_encoded
    model.update(update(pixels(300, 200, noise(10, 10))))  # one tile (256..511, 0..255)
    after = model.update(update(DisplayFill(130, 300, 2, 2, (1, 1, 1))))  # another (0..255, 256..511)
    assert after is not None
    encoded = model.rects_encoded
    keyframe = model.keyframe()
    assert model.rects_encoded - encoded == 2  # of 12 tiles
    joiner = FrameDecoder()
    joiner.feed(keyframe.data)
    assert (joiner.framebuffer == model.snapshot()).all()  # lossless tiles: what was kept is exact
    model.update(update(DisplaySize(640, 480)))
    model.keyframe()
    assert model.rects_encoded - encoded == 2 + 6  # a new size: every tile anew


def jpeg_of(x: int, y: int, rgb: np.ndarray, quality: int = 90) -> tuple[DisplayJpeg, np.ndarray]:
    """The endpoint's JPEG of `rgb` at (x, y), undecoded, and the pixels it decodes to."""
    data = encode_jpeg(rgb, quality)
    return DisplayJpeg(x, y, rgb.shape[1], rgb.shape[0], data), simplejpeg.decode_jpeg(data, colorspace="RGB")


@pytest.fixture
def jpeg_decodes(monkeypatch):
    """How many JPEGs the display model has decoded."""
    decodes = []

    class Counting:
        encode_jpeg = staticmethod(simplejpeg.encode_jpeg)

        @staticmethod
        def decode_jpeg(*args, **kwargs):
            decodes.append(1)
            return simplejpeg.decode_jpeg(*args, **kwargs)

    monkeypatch.setattr(engine.display, "simplejpeg", Counting)
    return decodes


def test_the_endpoints_jpeg_goes_out_before_it_is_decoded_and_a_late_joiner_sees_it(jpeg_decodes):
    model = DisplayModel()
    viewer = FrameDecoder()
    viewer.feed(model.update(update(DisplaySize(512, 384))).data)
    left, left_pixels = jpeg_of(0, 0, gradient(256, 256))
    right, right_pixels = jpeg_of(256, 0, gradient(256, 256)[::-1])
    # a fill over the first JPEG, in the same update: it must stay on top once the JPEG is decoded
    frame = model.update(update(left, DisplayFill(32, 32, 16, 16, (9, 9, 9)), right))
    assert left.jpeg in frame.data and right.jpeg in frame.data  # the endpoint's bytes, as they came
    assert jpeg_decodes == []  # nothing decoded between the endpoint and the participants
    model.settle(idle=False)  # the EndpointActor after the fan-out, with the next update waiting
    assert jpeg_decodes == []
    model.settle()  # ... and once nothing waits
    assert len(jpeg_decodes) == 2
    viewer.feed(frame.data)
    truth = np.zeros((384, 512, 3), np.uint8)
    truth[:256, :256], truth[:256, 256:] = left_pixels, right_pixels
    truth[32:48, 32:48] = 9
    assert (model.snapshot() == truth).all() and (viewer.framebuffer == truth).all()
    joiner = FrameDecoder()  # a late joiner: the keyframe renders the decoded framebuffer
    joiner.feed(model.keyframe().data)
    assert np.abs(joiner.framebuffer.astype(int) - truth.astype(int)).mean() < 2.0
    assert np.abs(joiner.framebuffer[32:48, 32:48].astype(int) - 9).mean() < 8  # the fill, in a JPEG tile
    assert (joiner.framebuffer[256:] == 0).all()  # solid tiles: exact
    model.settle()
    assert len(jpeg_decodes) == 2  # each decoded once


def test_what_reads_the_framebuffer_sees_pending_jpegs_first(jpeg_decodes):
    """A CopyRect of a pending JPEG copies its pixels; the pointer's patch over a pending JPEG
    shows the JPEG under the pointer; a snapshot or a keyframe settles first."""
    model = DisplayModel()
    viewer = FrameDecoder()
    feed = lambda *items: viewer.feed(model.update(update(*items)).data)  # noqa: E731
    feed(DisplaySize(128, 96, resizable=True), DisplayFill(0, 0, 128, 96, (0, 0, 90)), arrow(), DisplayPointer(20, 20))
    picture, picture_pixels = jpeg_of(0, 0, gradient(64, 64))
    feed(picture)  # painted under the pointer: the patch needs the JPEG's pixels
    assert len(jpeg_decodes) == 1  # only because the pointer's patch needed it
    assert (viewer.framebuffer == with_pointer(model)).all()
    assert (model.snapshot()[:64, :64] == picture_pixels).all()
    again, again_pixels = jpeg_of(64, 32, noise(32, 32))
    feed(again, DisplayCopy(0, 64, 32, 32, 64, 32))  # a copy of what the JPEG just painted
    assert (model.snapshot()[64:96, 0:32] == again_pixels).all()
    assert (viewer.framebuffer == with_pointer(model)).all()


def test_a_jpeg_that_does_not_decode_leaves_the_model_as_it_was():
    model = DisplayModel()
    model.update(update(DisplaySize(64, 64), DisplayFill(0, 0, 64, 64, (4, 5, 6))))
    frame = model.update(update(DisplayJpeg(0, 0, 16, 16, b"\xff\xd8not a jpeg")))
    assert frame is not None
    assert (model.snapshot() == (4, 5, 6)).all()


def test_pending_jpeg_is_bounded_while_messages_wait(jpeg_decodes, monkeypatch):
    first = jpeg_of(0, 0, gradient(64, 64))[0]
    monkeypatch.setattr(engine.display, "PENDING_MAX_BYTES", len(first.jpeg))
    model = DisplayModel()
    model.update(update(DisplaySize(256, 256)))
    model.update(update(first))
    model.settle(idle=False)
    assert jpeg_decodes == []  # under the bound: left for later
    model.update(update(jpeg_of(0, 64, noise(64, 64))[0]))  # past the bound
    model.settle(idle=False)
    assert len(jpeg_decodes) == 2


def test_a_large_frame_asks_to_go_out_at_once_a_small_one_is_coalesced():
    model = DisplayModel()
    model.update(update(DisplaySize(1024, 768)))
    assert not model.update(update(DisplayFill(0, 0, 8, 8, (1, 2, 3)))).flush  # a key's echo
    big, _ = jpeg_of(0, 0, noise(256, 256))
    assert model.update(update(big)).flush  # a part of a full-screen change


def test_a_mixed_update_decodes_none_of_its_jpeg_before_the_fan_out(jpeg_decodes):
    """A server's update of JPEG and zlib rectangles (text beside a photograph): the pixels that
    came decoded go on in order with the pending JPEG, on top of it where they overlap."""
    model = DisplayModel()
    viewer = FrameDecoder()
    viewer.feed(model.update(update(DisplaySize(256, 128))).data)
    photo, photo_pixels = jpeg_of(0, 0, gradient(128, 128))
    text = text_like(32, 48)
    frame = model.update(update(photo, pixels(100, 90, text), DisplayFill(0, 0, 8, 8, (1, 2, 3))))
    assert jpeg_decodes == []
    viewer.feed(frame.data)
    truth = np.zeros((128, 256, 3), np.uint8)
    truth[:128, :128] = photo_pixels
    truth[90:122, 100:148] = text
    truth[:8, :8] = (1, 2, 3)
    assert (model.snapshot() == truth).all() and (viewer.framebuffer == truth).all()
