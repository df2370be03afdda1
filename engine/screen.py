"""Screen models: what a late joiner needs to see the screen as it is now.

`TerminalScreen` keeps a pyte screen of the endpoint's output and renders it as a keyframe:
a byte string that, written to a fresh terminal, reproduces the current screen, including a
full-screen program in the alternate screen (`top`, `vim`, `less`) and the primary screen
beneath it, so that the joiner's terminal comes back to the shell when the program exits.

Parsing costs far more CPU than moving bytes: pyte parses about 1 MB/s, an SSH session can
print 100 MB/s. So the hot path only appends output to a buffer. Interactive output (a little
at a time: a shell, vim, top) is parsed when the endpoint actor finds the screen settled
(`idle()`: after a pause in the output, engine/actors/endpoint.py). Bulk output
(`cat` of a large file) is not parsed as it flows: the buffer is cut to its recent tail, because
after that much output the screen *is* the tail, and a keyframe parses at most that tail. A
cheap scan of the bytes cut keeps track of the alternate screen. (Parsing bulk output whenever
the actor idled cost 80% of a session's CPU and capped it at 11 MB/s: docs/benchmarks.md.)

A parsing failure (pyte meets a sequence it cannot handle) is logged and skipped: the screen
model serves late joiners, it must never end a session.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Protocol

import pyte
from pyte import graphics

from engine import messages
from engine.display import DisplayModel
from engine.messages import Keyframe

log = logging.getLogger(__name__)

_ALT_SCREEN_MODES = frozenset({1049 << 5, 1047 << 5, 47 << 5})
# Private modes that change how the joiner's terminal behaves, restored in the keyframe.
_CARRIED_PRIVATE_MODES = (1, 1000, 1002, 1003, 1006, 2004)
_IDLE_STEP = 16 * 1024     # at most this much pending is interactive output, parsed when idle
_BURST = 256 * 1024        # more pending than this: keep only the tail (also bounds a keyframe's cost)
_TAIL = 64 * 1024          # what a burst keeps: many screens' worth of output
_ALT_ENTER = (b"\x1b[?1049h", b"\x1b[?1047h", b"\x1b[?47h")
_ALT_EXIT = (b"\x1b[?1049l", b"\x1b[?1047l", b"\x1b[?47l")

_FG = {name: code for code, name in {**graphics.FG_ANSI, **graphics.FG_AIXTERM}.items()}
_BG = {name: code for code, name in {**graphics.BG_ANSI, **graphics.BG_AIXTERM}.items()}


class ScreenModel(Protocol):
    """What the EndpointActor keeps for late joiners. A terminal takes the endpoint's bytes
    (`feed`); a desktop (engine.display.DisplayModel) takes decoded `DisplayUpdate`s (`update`)
    and returns the one frame every participant receives."""

    def feed(self, data: bytes) -> None: ...

    def update(self, update: messages.DisplayUpdate) -> messages.Frame | None: ...

    def idle(self) -> None: ...

    def settle(self, *, idle: bool = True) -> None:
        """After a frame's fan-out: the work the model left off that path (a desktop decodes
        the endpoint's JPEGs it passed on). `idle`: no message waits for the actor's thread."""

    def resize(self, cols: int, rows: int) -> None: ...

    def keyframe(self) -> Keyframe: ...


class _AltScreen(pyte.Screen):
    """pyte ignores the alternate screen; this keeps the primary screen aside while it is on."""

    def __init__(self, columns: int, lines: int) -> None:
        super().__init__(columns, lines)
        self.saved_primary: tuple[Any, Any] | None = None

    def set_mode(self, *modes: int, **kwargs: Any) -> None:
        entering = (kwargs.get("private") and self.saved_primary is None
                    and any((m << 5) in _ALT_SCREEN_MODES for m in modes))
        if entering:
            self.saved_primary = (copy.deepcopy(self.buffer), copy.copy(self.cursor))
        super().set_mode(*modes, **kwargs)
        if entering:
            self.erase_in_display(2)

    def reset_mode(self, *modes: int, **kwargs: Any) -> None:
        leaving = (kwargs.get("private") and self.saved_primary is not None
                   and any((m << 5) in _ALT_SCREEN_MODES for m in modes))
        super().reset_mode(*modes, **kwargs)
        if leaving:
            buffer, cursor = self.saved_primary
            self.buffer.clear()
            self.buffer.update(buffer)
            self.cursor = cursor
            self.saved_primary = None

    def reset(self) -> None:
        super().reset()
        self.saved_primary = None

    def select_graphic_rendition(self, *attrs: int, private: bool = False) -> None:
        # CSI ? Ps m (vim sends CSI ? 4 m) is a private query, not a rendition: pyte passes
        # private=True, which its own method does not accept.
        if not private:
            super().select_graphic_rendition(*attrs)


def _sgr(char: Any) -> str:
    codes = ["0"]
    if char.bold:
        codes.append("1")
    if char.italics:
        codes.append("3")
    if char.underscore:
        codes.append("4")
    if char.blink:
        codes.append("5")
    if char.reverse:
        codes.append("7")
    if char.strikethrough:
        codes.append("9")
    for colour, names, truecolor in ((char.fg, _FG, "38"), (char.bg, _BG, "48")):
        if colour == "default":
            continue
        if colour in names:
            codes.append(str(names[colour]))
        elif len(colour) == 6:
            try:
                r, g, b = (int(colour[i:i + 2], 16) for i in (0, 2, 4))
            except ValueError:
                continue
            codes.append(f"{truecolor};2;{r};{g};{b}")
    return "\x1b[" + ";".join(codes) + "m"


def _render_buffer(buffer: Any, columns: int, lines: int, default: Any) -> list[str]:
    out: list[str] = []
    for y in range(lines):
        line = buffer.get(y)  # not buffer[y]: that would create every line never written to
        if not line:
            out.append(f"\x1b[{y + 1};1H")
            continue
        # Trailing blanks in the default rendition are already there after a clear. A line holds
        # only the cells written to it (pyte's lines are dicts defaulting to `default`): an
        # empty screen's keyframe looks at no cell.
        last = max((x for x, char in line.items()
                    if x < columns and (char.data not in ("", " ") or char[1:] != default[1:])), default=-1)
        out.append(f"\x1b[{y + 1};1H")
        rendition = None
        for x in range(last + 1):
            char = line[x]
            if char.data == "":  # the right half of a wide character
                continue
            sgr = _sgr(char)
            if sgr != rendition:
                out.append(sgr)
                rendition = sgr
            out.append(char.data)
        if rendition is not None:
            out.append("\x1b[0m")
    return out


class TerminalScreen:
    def __init__(self, cols: int = 80, rows: int = 24) -> None:
        self._screen = _AltScreen(cols, rows)
        self._stream = pyte.ByteStream(self._screen)
        self._pending = bytearray()
        self._keyframe: Keyframe | None = None  # the last one rendered, while the screen is unchanged
        self.bytes_skipped = 0  # cut during bursts, never parsed
        self.parse_errors = 0

    @property
    def cols(self) -> int:
        return self._screen.columns

    @property
    def rows(self) -> int:
        return self._screen.lines

    def update(self, update: messages.DisplayUpdate) -> messages.Frame | None:
        raise TypeError("a terminal takes bytes, not display updates")

    def settle(self, *, idle: bool = True) -> None:
        """A terminal defers its parsing to `idle` instead."""

    def feed(self, data: bytes) -> None:
        """The hot path: append, and during a burst cut to the tail. Never parses."""
        self._pending += data
        if len(self._pending) > _BURST:
            self._skip_to_tail()

    def idle(self) -> None:
        """The endpoint actor has nothing queued: parse what is pending if it is interactive
        output. More than that is a burst: it waits, to be cut to its tail."""
        if 0 < len(self._pending) <= _IDLE_STEP:
            self._catch_up()

    def resize(self, cols: int, rows: int) -> None:
        self._catch_up()
        self._screen.resize(lines=rows, columns=cols)
        self._keyframe = None

    def display(self) -> list[str]:
        """The visible text, one string per row (for tests and the dashboard's preview)."""
        self._catch_up()
        return list(self._screen.display)

    def keyframe(self) -> Keyframe:
        if len(self._pending) > 2 * _TAIL:  # a joiner waits for this parse: only the tail
            self._skip_to_tail()
        self._catch_up()
        if self._keyframe is None:  # ten viewers joining a quiet session: one rendering
            self._keyframe = self._render()
        return self._keyframe

    def _render(self) -> Keyframe:
        screen = self._screen
        parts = ["\x1bc", f"\x1b[8;{screen.lines};{screen.columns}t"]
        if screen.saved_primary is not None:
            primary, primary_cursor = screen.saved_primary
            parts += _render_buffer(primary, screen.columns, screen.lines, screen.default_char)
            parts.append(f"\x1b[{primary_cursor.y + 1};{primary_cursor.x + 1}H\x1b[?1049h\x1b[H\x1b[2J")
        parts += _render_buffer(screen.buffer, screen.columns, screen.lines, screen.default_char)
        parts += [f"\x1b[?{mode}h" for mode in _CARRIED_PRIVATE_MODES if (mode << 5) in screen.mode]
        parts.append(_sgr(screen.cursor.attrs))
        parts.append(f"\x1b[{screen.cursor.y + 1};{screen.cursor.x + 1}H")
        if screen.cursor.hidden:
            parts.append("\x1b[?25l")
        return Keyframe("".join(parts).encode("utf-8", "replace"), screen.columns, screen.lines)

    def _catch_up(self) -> None:
        if self._pending:
            data, self._pending = bytes(self._pending), bytearray()
            self._parse(data)

    def _parse(self, data: bytes) -> None:
        self._keyframe = None
        try:
            self._stream.feed(data)
        except Exception:
            self.parse_errors += 1
            if self.parse_errors == 1:
                log.warning("the terminal model could not parse some output; skipped", exc_info=True)

    def _skip_to_tail(self) -> None:
        """Keep the last _TAIL bytes from a line start; start the screen afresh beneath them,
        in the alternate screen if the bytes cut left it on."""
        cut = len(self._pending) - _TAIL
        newline = self._pending.find(b"\n", cut)
        if newline != -1:
            cut = newline + 1
        dropped = bytes(self._pending[:cut])
        del self._pending[:cut]
        self.bytes_skipped += len(dropped)
        self._keyframe = None
        entered = max(dropped.rfind(seq) for seq in _ALT_ENTER)
        exited = max(dropped.rfind(seq) for seq in _ALT_EXIT)
        in_alt = entered > exited if entered != exited else self._screen.saved_primary is not None
        self._screen.reset()
        if in_alt:
            self._screen.set_mode(1049, private=True)


def screen_for(protocol: messages.EndpointProtocol, cols: int, rows: int) -> ScreenModel:
    """The screen model of a protocol: a terminal, or a desktop's framebuffer (engine.display)."""
    if protocol in (messages.EndpointProtocol.VNC, messages.EndpointProtocol.RDP):
        return DisplayModel()
    return TerminalScreen(cols, rows)
