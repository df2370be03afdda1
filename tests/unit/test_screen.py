"""The terminal screen model: a keyframe written to a fresh terminal reproduces the screen."""

import pytest

from engine import screen as screen_module
from engine.screen import TerminalScreen


def replay(keyframe, cols, rows):
    fresh = TerminalScreen(cols, rows)
    fresh.feed(keyframe.data)
    return fresh


def test_a_keyframe_reproduces_text_colours_and_cursor():
    s = TerminalScreen(30, 4)
    s.feed(b"$ ls\r\nfile \x1b[1;31mred\x1b[0m \x1b[38;5;100mx\x1b[38;2;1;2;3my\x1b[0m\r\n$ ")
    copy = replay(s.keyframe(), 30, 4)
    assert copy.display() == s.display()
    assert copy._screen.buffer[1][5] == s._screen.buffer[1][5]  # bold red survives
    assert (copy._screen.cursor.x, copy._screen.cursor.y) == (2, 2)


def test_a_full_screen_program_and_the_shell_beneath_it():
    s = TerminalScreen(20, 3)
    s.feed(b"$ top\r\n")
    s.feed(b"\x1b[?1049h\x1b[H\x1b[2Jtop - 10:00\r\nPID USER")
    copy = replay(s.keyframe(), 20, 3)
    assert copy.display()[0].startswith("top - 10:00")
    copy.feed(b"\x1b[?1049l")  # the program exits: the joiner's terminal shows the shell again
    assert copy.display()[0].startswith("$ top")


def test_vims_private_sgr_is_not_an_error():
    s = TerminalScreen(10, 2)
    s.feed(b"a\x1b[?4mb")
    assert s.display()[0].startswith("ab") and s.parse_errors == 0


def test_a_parse_failure_is_skipped_not_raised(monkeypatch):
    s = TerminalScreen(10, 2)

    def broken(*args, **kwargs):
        raise TypeError("a sequence pyte cannot handle")

    monkeypatch.setattr(s._screen, "draw", broken)
    s.feed(b"text")
    assert s.keyframe().data.startswith(b"\x1bc") and s.parse_errors == 1


def test_a_burst_keeps_the_tail_and_never_parses_on_the_hot_path(monkeypatch):
    s = TerminalScreen(40, 3)
    parsed = []
    monkeypatch.setattr(s, "_parse", parsed.append)
    for n in range(100_000):
        s.feed(b"line %d\r\n" % n)
    assert parsed == [] and s.bytes_skipped > 500_000
    monkeypatch.undo()
    assert replay(s.keyframe(), 40, 3).display()[:2] == [f"line {n}".ljust(40) for n in (99_998, 99_999)]


def test_a_burst_inside_the_alternate_screen_stays_in_it():
    s = TerminalScreen(20, 3)
    s.feed(b"\x1b[?1049h" + b"x" * (screen_module._BURST + 1000) + b"\r\nTOP\r\n")
    assert s._screen.saved_primary is not None


def test_idle_parses_interactive_output_but_not_a_burst(monkeypatch):
    s = TerminalScreen(20, 3)
    s.feed(b"$ ls\r\n")
    s.idle()
    assert s._pending == b"" and s.display()[0].startswith("$ ls")
    parsed = []
    monkeypatch.setattr(s, "_parse", parsed.append)
    s.feed(b"y" * (screen_module._IDLE_STEP + 1))
    s.idle()
    assert parsed == []


def test_a_keyframe_parses_at_most_the_tail(monkeypatch):
    s = TerminalScreen(40, 3)
    s.feed(b"".join(b"line %d\r\n" % n for n in range(30_000)))  # about 250 KB: under the burst cut
    parsed = []
    real = s._parse
    monkeypatch.setattr(s, "_parse", lambda data: (parsed.append(len(data)), real(data)))
    copy = replay(s.keyframe(), 40, 3)
    assert sum(parsed) <= screen_module._TAIL
    assert copy.display()[1].startswith("line 29999")


def test_a_keyframe_is_rendered_once_while_the_screen_is_unchanged():
    screen = TerminalScreen(40, 5)
    screen.feed(b"$ ls\r\n")
    first = screen.keyframe()
    assert screen.keyframe() is first  # ten joiners of a quiet session: one rendering
    screen.feed(b"more\r\n")
    after_output = screen.keyframe()
    assert after_output is not first and b"more" in after_output.data
    screen.resize(30, 4)
    resized = screen.keyframe()
    assert resized is not after_output and (resized.cols, resized.rows) == (30, 4)
    screen.feed(b"x" * 300_000)  # a burst is cut to its tail: the screen starts afresh
    assert screen.keyframe() is not resized
