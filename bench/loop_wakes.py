"""What waking a busy trio loop from an actor's thread costs that thread: one call to the loop's
token per participant of a fan-out, or one per fan-out (engine.bridge.batched_calls).

    .venv/bin/python bench/loop_wakes.py [--participants 11] [--frames 2000] [--busy-tasks 4]

A trio loop runs `--busy-tasks` tasks that each compute for about 100 us and then yield, as
senders writing websocket messages do. Another thread, as an actor's fan-out, schedules
`--participants` no-op callbacks onto the loop per frame, a frame every millisecond: one
`run_sync_soon` each, or one for them all. Each call writes to the loop's wake-up socket and
lets go of the GIL for the write; the thread then waits for the GIL again behind the busy loop.
Prints the time the thread spends per frame (median, p99, max), both ways, alternated 3 times.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import trio


def one(participants: int, frames: int, busy_tasks: int, batched: bool) -> list[float]:
    token_box: list[trio.lowlevel.TrioToken] = []
    done = threading.Event()

    async def busy() -> None:
        while not done.is_set():
            total = 0
            for i in range(2000):
                total += i
            await trio.sleep(0)

    async def loop() -> None:
        token_box.append(trio.lowlevel.current_trio_token())
        async with trio.open_nursery() as nursery:
            for _ in range(busy_tasks):
                nursery.start_soon(busy)
            while not done.is_set():
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()

    thread = threading.Thread(target=trio.run, args=(loop,))
    thread.start()
    while not token_box:
        time.sleep(0.01)
    token = token_box[0]

    def noop() -> None:
        pass

    def run_all(fns: list[object]) -> None:
        for fn in fns:
            fn()  # type: ignore[operator]

    spent = []
    for _ in range(frames):
        began = time.perf_counter()
        if batched:
            token.run_sync_soon(run_all, [noop] * participants)
        else:
            for _ in range(participants):
                token.run_sync_soon(noop)
        spent.append((time.perf_counter() - began) * 1e6)
        time.sleep(0.001)
    done.set()
    thread.join()
    return sorted(spent)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=11)
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--busy-tasks", type=int, default=4)
    args = parser.parse_args()
    for _ in range(3):
        for batched in (False, True):
            spent = one(args.participants, args.frames, args.busy_tasks, batched)
            print(f"{'one call per fan-out' if batched else 'one call per participant':26} "
                  f"median {statistics.median(spent):8.1f} us  p99 {spent[int(len(spent) * 0.99)]:9.1f} us  "
                  f"max {spent[-1] / 1000:8.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
