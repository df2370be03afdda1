"""The EndpointActor's fan-out and its screen model."""

from engine.actors.endpoint import QUIET_SECONDS
from engine.screen import TerminalScreen
from tests.actors.conftest import viewer, wait_until


def test_the_screen_model_parses_output_after_a_pause_not_as_it_flows(engine, session, connection, clock,
                                                                     monkeypatch):
    """Fan-out never waits for the parser: output that keeps coming stays pending (a keyframe
    parses it); the first output after a pause parses what the settled screen showed."""
    parses = []
    real_idle = TerminalScreen.idle
    monkeypatch.setattr(TerminalScreen, "idle", lambda self: (parses.append(len(self._pending)), real_idle(self)))
    engine.describe(session.session_id)  # the tree has handled everything before: nothing waits
    clock.advance(QUIET_SECONDS)
    connection.emit(b"$ make\r\n")  # after a pause: parsed
    assert session.wait_for_output(b"$ make") and wait_until(lambda: len(parses) == 1)
    for n in range(5):  # output that keeps coming, at one instant of the engine's clock: not parsed
        connection.emit(b"building %d\r\n" % n)
    assert session.wait_for_output(b"building 4")
    engine.describe(session.session_id)
    assert len(parses) == 1
    clock.advance(QUIET_SECONDS)
    connection.emit(b"done\r\n")
    assert session.wait_for_output(b"done")
    assert wait_until(lambda: len(parses) == 2)
    assert parses[1] == len(b"".join(b"building %d\r\n" % n for n in range(5)) + b"done\r\n")
    late = engine.join_session(session.session_id, viewer(1))
    assert late.sink.wait_for(lambda s: s.keyframes)
    assert b"building 4" in late.sink.keyframes[0].data and b"done" in late.sink.keyframes[0].data
