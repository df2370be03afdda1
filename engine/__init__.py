"""The actor engine: sessions, participants and endpoint connections as supervised pykka actors.

Start here: `engine.runtime.Engine` (the public surface), `engine.policy` (every rule),
`engine.messages` (every message), `engine.actors` (the supervision tree).

Code outside the engine (protocols/, dashboard/, cosession/) uses what this module exports
and the modules `engine.messages`, `engine.policy` and `engine.access` (values and pure
functions) and `engine.audit` (reading and verifying the audit log); the actors, the store and
the rest are the engine's own business (tests/unit/test_architecture.py checks it).
"""

from engine.bridge import LoopBridge, LoopClosed
from engine.clock import Clock, ManualClock, SystemClock, Timer
from engine.connection import Credentials, EndpointConnection, EndpointEvents
from engine.db import make_engine
from engine.migrate import SchemaError, adopt, upgrade as upgrade_schema
from engine.display import DisplayModel, encode_png
from engine.errors import EngineNotRunning, NodeInUse, ReplyTimeout
from engine.metrics import EngineMetrics
from engine.nodes import running_nodes
from engine.runtime import Engine, Participant, actor_threads, tell_session
from engine.sinks import CollectingSink, OutboundQueue, Sink

__all__ = [
    "Clock", "CollectingSink", "Credentials", "DisplayModel", "EndpointConnection", "EndpointEvents", "Engine",
    "EngineMetrics", "EngineNotRunning", "LoopBridge", "LoopClosed", "ManualClock", "NodeInUse", "OutboundQueue",
    "Participant", "ReplyTimeout", "SchemaError", "Sink", "SystemClock", "Timer", "actor_threads", "adopt",
    "encode_png", "make_engine", "running_nodes", "tell_session", "upgrade_schema",
]
