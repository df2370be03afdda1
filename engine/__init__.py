"""The actor engine: sessions, participants and endpoint connections as supervised pykka actors.

Start here: `engine.runtime.Engine` (the public surface), `engine.policy` (every rule),
`engine.messages` (every message), `engine.actors` (the supervision tree).
"""
