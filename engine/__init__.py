"""The actor engine: sessions, participants and endpoint connections as supervised pykka actors.

Start here: `engine.runtime.Engine` (the public surface), `engine.policy` (every rule),
`engine.messages` (every message), `engine.actors` (the supervision tree).

Code outside the engine (protocols/, dashboard/, cosession/) uses what this module exports
and the modules `engine.messages`, `engine.policy` and `engine.access` (values and pure
functions); the actors and the store are the engine's own business.
"""

from engine.bridge import LoopBridge, LoopClosed
from engine.clock import Clock, ManualClock, SystemClock, Timer
from engine.connection import Credentials, EndpointConnection, EndpointEvents
from engine.errors import EngineNotRunning, NodeInUse, ReplyTimeout
from engine.runtime import Engine, Participant, actor_threads
from engine.sinks import CollectingSink, OutboundQueue, Sink

__all__ = [
    "Clock", "CollectingSink", "Credentials", "EndpointConnection", "EndpointEvents", "Engine", "EngineNotRunning",
    "LoopBridge", "LoopClosed", "ManualClock", "NodeInUse", "OutboundQueue", "Participant", "ReplyTimeout", "Sink",
    "SystemClock", "Timer", "actor_threads",
]
