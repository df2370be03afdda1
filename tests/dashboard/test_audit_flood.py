"""One viewer reconnecting in a loop, flooding refused input on every connection, against the real
gateway (issue 10, item 5): every refusal is counted, but repeats share a row, and the joins are
bounded per user and session with a clear reason. Settings at their defaults (config/default.toml):
10 joins per user and session per 60 s, repeated refusals counted per 10 s."""

from __future__ import annotations

from trio_websocket import ConnectionClosed


CONNECTIONS = 20
INPUTS = 101  # the gateway closes a connection after more than 100 refused messages


async def test_a_viewer_reconnecting_in_a_loop_writes_a_bounded_number_of_counted_rows(harness):
    settings = harness.gateway.settings
    assert (settings.engine.max_joins_per_user, settings.audit.refusal_interval_seconds) == (10, 10.0)
    harness.user("alice")
    harness.user("bob")
    controller, joined = await harness.start("alice")
    sid = joined["session_id"]
    await controller.control("state", state="active")

    accepted, refused, sent = 0, [], 0
    for _ in range(CONNECTIONS):
        viewer, answer = await harness.join("bob", sid)
        if answer["type"] == "refused":
            refused.append(answer)
            await viewer.until_closed()
            continue
        accepted += 1
        for n in range(INPUTS):
            try:
                await viewer.send(b"rm -rf /\r")
            except ConnectionClosed:
                break
            sent += 1
        await viewer.until_closed()

    assert accepted == 10 and len(refused) == CONNECTIONS - 10
    assert {(r["reason"], r["fatal"]) for r in refused} == {("too_many_joins", True)}
    assert "you joined this session 10 times in the last 60 s; try again in" in refused[0]["detail"]

    rows = [r for r in await harness.audit(None) if r["actor_name"] == "bob" and r["session_id"] == sid]
    kinds = [r["kind"] for r in rows]
    inputs = [r for r in rows if r["kind"] == "input_refused"]
    joins = [r for r in rows if r["kind"] == "join_refused"]
    # every refusal is counted ...
    assert sum(r["detail"].get("count", 1) for r in inputs) == accepted * 101 == sent
    assert sum(r["detail"].get("count", 1) for r in joins) == len(refused)
    assert {r["detail"]["reason"] for r in joins} == {"too_many_joins"}
    # ... in few rows: per connection its join, its first refusal, one row counting the other 100,
    # its close and its disconnect; the refused joins in one row and one counting row at most
    assert kinds.count("join") == 10 and kinds.count("websocket_closed") == 10 and kinds.count("disconnect") == 10
    assert len(inputs) == 2 * accepted and len(joins) <= 2
    assert len(rows) <= 5 * accepted + 2, kinds
    counted = [r for r in inputs if "count" in r["detail"]]
    assert all(r["detail"]["count"] == 100 and r["detail"]["first_at"] <= r["detail"]["last_at"] == r["at"]
               for r in counted)
    # each connection's rows in the order they happened: join, first refusal, the count, close, disconnect
    assert kinds[:5] == ["join", "input_refused", "input_refused", "websocket_closed", "disconnect"]

    # and the controller never noticed
    await controller.send(b"still here\r")
    await controller.output_contains(b"still here")


async def test_another_user_and_the_controller_are_not_bounded_by_one_viewers_loop(harness):
    harness.user("alice")
    harness.user("bob")
    harness.user("carol")
    controller, joined = await harness.start("alice")
    sid = joined["session_id"]
    for _ in range(10):
        viewer, answer = await harness.join("bob", sid)
        assert answer["type"] == "joined"
        await viewer.send({"type": "leave"})
        await viewer.until_closed()
    viewer, answer = await harness.join("bob", sid)
    assert answer["reason"] == "too_many_joins"
    carol, answer = await harness.join("carol", sid)
    assert answer["type"] == "joined" and answer["role"] == "viewer"
