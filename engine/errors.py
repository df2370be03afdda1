"""The few errors the engine raises. A refusal is not an error: it is a `Refused` value."""


class EngineError(Exception):
    """Base of the engine's own errors."""


class EngineNotRunning(EngineError):
    """The engine was used before `start()` or after `stop()`."""


class IllegalTransition(EngineError):
    """A session was asked to move between states that the state machine does not connect."""

    def __init__(self, current: str, target: str) -> None:
        super().__init__(f"a session cannot go from {current} to {target}")
        self.current = current
        self.target = target


class ReplyTimeout(EngineError):
    """A blocking call of the Python API got no reply in time."""


class NodeInUse(EngineError):
    """Another process that is still running uses this node's name on this database
    (engine/nodes.py): starting would end its sessions."""


class BlockedWorker(EngineError):
    """An actor waited for a reply on a pool worker (engine/actors/pool.py): actors answer
    through a message's `reply_to`, never by `ask()`ing one another."""
