"""trio: the same API, in a trio program.

tasklanes runs on anyio, so ``run_all`` and friends work unchanged under trio: io
tasks run in trio's scheduler, blocking and cpu tasks on the shared threads and
processes, and a trio cancel scope (``trio.move_on_after``) stops a batch of any
kind as it stops anything else.

Run: python examples/08_trio.py
"""

from __future__ import annotations

import time

import trio

from tasklanes import as_completed, call, check_cancelled, run_all


async def ping(i: int) -> int:
    await trio.sleep(0.05)
    return i


def read_sensor(i: int) -> int:
    time.sleep(0.05)  # a blocking driver
    return i * 10


def checksum(n: int) -> int:
    return sum(i * i % 7 for i in range(n))


def slow_blocking_job() -> None:
    for _ in range(1000):  # polite: a thread cannot be killed, so it checks now and then
        time.sleep(0.01)
        check_cancelled()


async def main() -> None:
    start = trio.current_time()
    pings = await run_all([call(ping, i) for i in range(100)], limit=50)
    readings = await run_all([call(read_sensor, i) for i in range(20)], kind="blocking")
    sums = await run_all([call(checksum, n) for n in (10_000, 20_000)], kind="cpu")
    print(f"io, blocking and cpu batches in {trio.current_time() - start:.2f} s under trio")
    assert pings == list(range(100))
    assert readings == [i * 10 for i in range(20)]
    assert sums == [checksum(10_000), checksum(20_000)]

    async with as_completed([call(ping, i) for i in range(5)]) as pings:
        order = [i async for i, _ in pings]
    assert sorted(order) == list(range(5))

    # A trio cancel scope around a batch: the blocking tasks are asked to stop, and
    # run_all returns only once their threads have.
    start = trio.current_time()
    with trio.move_on_after(0.2) as scope:
        await run_all([slow_blocking_job for _ in range(4)], kind="blocking")
    took = trio.current_time() - start
    assert scope.cancelled_caught
    assert took < 2, took
    print(f"a 10 s blocking batch under trio.move_on_after(0.2): stopped after {took:.2f} s")


if __name__ == "__main__":
    trio.run(main)
