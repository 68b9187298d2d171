"""The io lane against its floor: a hand-written loop of worker tasks.

The floor is what a careful programmer writes without tasklanes: ``limit`` asyncio
tasks pulling from one shared iterator and storing results by index. Three cases
(issue 14), each alternated with its floor in one process, medians of ``--rounds``:

* 100k trivial coroutines, generator input, limit=1000 (target <= 1.5x);
* the same with a list input (target <= 1.3x);
* 10k x 10 ms sleeps, limit=1000 (target <= 1.1x).

Run: ``python benchmarks/bench_io_floor.py [--rounds 5] [--n 100000] [--backend asyncio]``;
``--backend uvloop`` runs both sides on uvloop, ``--backend trio`` on trio, where the floor
is the same loop of workers in a nursery (no targets there: for information).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import tasklanes

BACKEND = "asyncio"  # --backend: asyncio, uvloop or trio


async def trivial(i: int) -> int:
    return i


async def sleepy(i: int) -> int:
    if BACKEND == "trio":
        import trio

        await trio.sleep(0.01)
    else:
        await asyncio.sleep(0.01)
    return i


async def floor(tasks: Iterable[Coroutine[Any, Any, Any]], limit: int) -> list[Any]:
    """The hand-written loop: ``limit`` workers share one iterator."""
    results: dict[int, Any] = {}
    it = enumerate(tasks)

    async def worker() -> None:
        for index, coro in it:
            results[index] = await coro

    if BACKEND == "trio":
        import trio

        async with trio.open_nursery() as nursery:
            for _ in range(limit):
                nursery.start_soon(worker)
    else:
        async with asyncio.TaskGroup() as tg:
            for _ in range(limit):
                tg.create_task(worker())
    return [results[i] for i in range(len(results))]


async def lanes(tasks: Iterable[Coroutine[Any, Any, Any]], limit: int) -> list[Any]:
    return await tasklanes.run_all(tasks, kind="io", limit=limit)


def timed(run: Callable[[], Coroutine[Any, Any, list[Any]]], n: int) -> float:
    gc.collect()

    async def main() -> float:
        t0 = time.perf_counter()
        out = await run()
        took = time.perf_counter() - t0
        assert len(out) == n
        return took

    if BACKEND == "trio":
        import trio

        return trio.run(main)
    if BACKEND == "uvloop":
        import uvloop

        return uvloop.run(main())
    return asyncio.run(main())


def case(name: str, fn: Callable[[int], Any], n: int, as_list: bool, rounds: int,
         limit: int = 1000) -> float:
    def make() -> Iterable[Any]:
        gen = (fn(i) for i in range(n))
        return list(gen) if as_list else gen

    ours: list[float] = []
    theirs: list[float] = []
    # One untimed round each first (as benchmarks/run.py does): the first call imports
    # and builds the default scheduler, which is no per-task cost.
    timed(lambda: floor(make(), limit), n)
    timed(lambda: lanes(make(), limit), n)
    for _ in range(rounds):
        theirs.append(timed(lambda: floor(make(), limit), n))
        ours.append(timed(lambda: lanes(make(), limit), n))
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"{name:<42} tasklanes {a * 1e3:8.1f} ms  floor {b * 1e3:8.1f} ms  ratio {a / b:5.2f}x",
          flush=True)
    return a / b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--sleeps", type=int, default=10_000)
    parser.add_argument("--backend", choices=("asyncio", "uvloop", "trio"), default="asyncio")
    args = parser.parse_args()
    global BACKEND
    BACKEND = args.backend
    case(f"{args.n} trivial, generator input (<= 1.5x)", trivial, args.n, False, args.rounds)
    case(f"{args.n} trivial, list input (<= 1.3x)", trivial, args.n, True, args.rounds)
    case(f"{args.sleeps} x 10 ms sleeps, list input (<= 1.1x)", sleepy, args.sleeps, True,
         args.rounds)


if __name__ == "__main__":
    main()
