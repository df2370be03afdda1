"""EndpointEvents bounds the output in flight between a connection and its endpoint actor: past
the bound a connection is told to stop reading, and is resumed, once, when the actor has caught
up to half of it (tests/protocols/test_ssh_openssh.py runs it against OpenSSH)."""

from engine.connection import EndpointEvents
from engine.messages import Frame


class Inbox:
    def __init__(self):
        self.told = []

    def tell(self, message):
        self.told.append(message)


def test_output_past_the_bound_stops_the_reader_until_the_actor_catches_up():
    inbox = Inbox()
    events = EndpointEvents(inbox, max_in_flight=100)
    resumed = []
    assert events.output(b"x" * 60, lambda: resumed.append(1)) is True
    assert events.output(b"x" * 40, lambda: resumed.append(2)) is False  # at the bound: stop reading
    assert [len(m.data) for m in inbox.told if isinstance(m, Frame)] == [60, 40]  # told all the same
    assert events.in_flight == 100
    events.processed(40)
    assert resumed == []  # 60 still in flight: more than half the bound
    events.processed(60)
    assert resumed == [2] and events.in_flight == 0
    events.processed(10)
    assert resumed == [2] and events.in_flight == 0  # once, and never below nothing


def test_a_connection_that_cannot_pause_is_never_told_to():
    events = EndpointEvents(Inbox(), max_in_flight=10)
    assert events.output(b"x" * 50) is True  # no resume given: nothing to wait for
