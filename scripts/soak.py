"""Soak test: mixed tasklanes load for a while, watching memory and file descriptors.

    python scripts/soak.py                    # 10 minutes
    python scripts/soak.py --minutes 1 --interval 5

One Scheduler serves the whole run. Round after round, on asyncio, uvloop and trio in
turn (and now and then ``run_all_sync`` from a helper thread), it runs on every lane:
big and small batches, exceptions, per-task timeouts (cpu workers killed and
replaced), crashes (``os._exit``, segfault), batches cancelled from outside,
``as_completed`` loops left early, ``amap`` and ``@offload`` calls.

Every ``--interval`` seconds it prints the parent's RSS, the worker processes' total
RSS (every process below this one: workers, forkserver, resource tracker), open file
descriptors, threads and processes. After a warm-up (the first
sample taken once ``--warmup`` seconds have passed) those figures are the baseline; the
run fails (exit status 1) if, at the end, the parent's RSS grew by more than
``--rss-tolerance`` MB, or the fd, thread or process counts by more than
``--count-tolerance``. The end figure is the median of the last three samples, so one
sample taken mid-batch does not decide. The last line is a JSON summary.

Not part of the test suite (it takes minutes); the figures of a real run are in
docs/reliability.md.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import statistics
import sys
import threading
import time
from typing import Any

import anyio

import tasklanes
from tasklanes import Scheduler, TaskTimeout, WorkerCrashed, call

# ------------------------------------------------------------------ tasks (module level: cpu)


def square(x: int) -> int:
    return x * x


def spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def fail(i: int) -> int:
    raise ValueError(f"soak {i}")


def sleep_then(seconds: float, value: int) -> int:
    time.sleep(seconds)
    return value


def crash(code: int) -> None:
    os._exit(code)


def segfault() -> None:
    ctypes.string_at(0)


def payload(size: int) -> bytes:
    return b"x" * size


def blocking_wait(seconds: float) -> float:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        tasklanes.check_cancelled()
        time.sleep(0.005)
    return seconds


async def io_task(i: int) -> int:
    await anyio.sleep(0.001 * (i % 3))
    return i


@tasklanes.offload(kind="cpu")
def offloaded(x: int) -> int:
    return x + 1


# ------------------------------------------------------------------ measurements


def rss_mb(pid: int | str = "self") -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def descendants() -> list[int]:
    """Every live process below this one (forkserver workers are the server's children)."""
    table: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                table.setdefault(int(fields[1]), []).append(int(entry))
    out: list[int] = []
    stack = [os.getpid()]
    while stack:
        for pid in table.get(stack.pop(), []):
            out.append(pid)
            stack.append(pid)
    return out


def sample(t0: float, rounds: int, tasks: int) -> dict[str, Any]:
    kids = descendants()
    return {
        "t": round(time.monotonic() - t0, 1),
        "rss_mb": round(rss_mb(), 1),
        "workers_rss_mb": round(sum(rss_mb(p) for p in kids), 1),
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": threading.active_count(),
        "processes": len(kids),
        "rounds": rounds,
        "tasks": tasks,
    }


# ------------------------------------------------------------------ one round of load


async def round_async(sched: Scheduler, n: int) -> int:
    """One round of mixed work on the current loop; returns how many tasks it ran."""
    count = 0
    async with anyio.create_task_group() as tg:

        async def io() -> None:
            nonlocal count
            out = await sched.run_all([call(io_task, i) for i in range(500)], limit=100)
            assert out == list(range(500))
            count += 500
            with anyio.move_on_after(0.02):
                await sched.run_all([call(anyio.sleep, 5) for _ in range(50)])
            count += 50

        async def blocking() -> None:
            nonlocal count
            out = await sched.run_all(
                [call(sleep_then, 0.001, i) for i in range(100)], "blocking", limit=8
            )
            assert out == list(range(100))
            out = await sched.run_all(
                [call(blocking_wait, 0.002), call(blocking_wait, 5.0), call(fail, 1)],
                "blocking",
                timeout=0.1,
                return_exceptions=True,
            )
            assert out[0] == 0.002 and type(out[1]) is TaskTimeout and type(out[2]) is ValueError
            count += 103

        async def cpu() -> None:
            nonlocal count
            out = await sched.run_all([call(square, i) for i in range(2000)], "cpu")
            assert out[-1] == 1999**2
            count += 2000
            tasks: list[Any] = [call(spin, 20_000) for _ in range(20)]
            tasks[3] = call(fail, 3)
            tasks[7] = call(payload, 1 << 20)
            if n % 5 == 0:  # the costly faults now and then: each one replaces a worker
                tasks[5] = call(sleep_then, 5.0, 0)
                tasks[9] = call(crash, 3) if n % 10 == 0 else call(segfault)
            out = await sched.run_all(tasks, "cpu", timeout=0.5, return_exceptions=True)
            assert type(out[3]) is ValueError and out[7] == b"x" * (1 << 20), out[:8]
            if n % 5 == 0:
                assert type(out[5]) is TaskTimeout and type(out[9]) is WorkerCrashed, out
            count += 20
            if n % 3 == 0:
                with anyio.move_on_after(0.05):
                    await sched.run_all([call(sleep_then, 5.0, i) for i in range(2)], "cpu")
                count += 2

        async def iterators() -> None:
            nonlocal count
            async with sched.as_completed([call(square, i) for i in range(300)], "cpu") as it:
                async for index, _ in it:
                    if index % 50 == 49:
                        break  # left early: the rest is cancelled
            results = [x async for x in sched.amap(square, range(100), "cpu", limit=2)]
            assert results == [i * i for i in range(100)]
            results = [x async for x in sched.amap(square, range(100), "blocking", limit=4)]
            assert results == [i * i for i in range(100)]
            assert await offloaded(n) == n + 1
            count += 301

        for fn in (io, blocking, cpu, iterators):
            tg.start_soon(fn)
    return count


async def watched_round(sched: Scheduler, n: int) -> int:
    with anyio.fail_after(ROUND_LIMIT):  # a hang ends the run with a traceback
        return await round_async(sched, n)


ROUND_LIMIT = 60.0


def round_sync(sched: Scheduler) -> int:
    out = sched.run_all_sync([call(square, i) for i in range(200)], "cpu")
    assert out == [i * i for i in range(200)]
    out = sched.run_all_sync([call(sleep_then, 0.001, i) for i in range(20)], "blocking")
    assert out == list(range(20))
    return 220


LOOPS: list[tuple[str, dict[str, Any]]] = [("asyncio", {}), ("trio", {})]
with contextlib.suppress(ImportError):
    import uvloop  # noqa: F401

    LOOPS.insert(1, ("asyncio", {"use_uvloop": True}))


# ------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=None, help="seconds (default: 10%% of the run, at least one interval)")
    parser.add_argument("--rss-tolerance", type=float, default=20.0, help="MB of parent RSS growth allowed")
    parser.add_argument("--count-tolerance", type=int, default=2, help="fds/threads/processes growth allowed")
    parser.add_argument("--pause", type=float, default=0.1, help="seconds between rounds (keeps a shared machine usable)")
    args = parser.parse_args()

    duration = args.minutes * 60
    warmup = args.warmup if args.warmup is not None else max(args.interval, duration / 10)
    t0 = time.monotonic()
    samples: list[dict[str, Any]] = []
    baseline: dict[str, Any] | None = None
    rounds = tasks = 0
    next_sample = t0
    print(f"soak: {args.minutes:g} min, sample every {args.interval:g} s, warm-up {warmup:g} s", flush=True)
    header = f"{'t (s)':>7} {'rss MB':>7} {'workers MB':>10} {'fds':>4} {'threads':>7} {'processes':>9} {'rounds':>6} {'tasks':>9}"
    print(header, flush=True)

    with Scheduler(cpu_limit=2, blocking_limit=8) as sched:
        while True:
            now = time.monotonic()
            if now >= next_sample:
                s = sample(t0, rounds, tasks)
                samples.append(s)
                mark = ""
                if baseline is None and s["t"] >= warmup:
                    baseline = s
                    mark = "  <- baseline"
                print(
                    f"{s['t']:7.0f} {s['rss_mb']:7.1f} {s['workers_rss_mb']:10.1f} {s['fds']:4d} "
                    f"{s['threads']:7d} {s['processes']:9d} {s['rounds']:6d} {s['tasks']:9d}{mark}",
                    flush=True,
                )
                next_sample += args.interval
                if now - t0 >= duration:
                    break
            backend, options = LOOPS[rounds % len(LOOPS)]
            tasks += anyio.run(watched_round, sched, rounds, backend=backend, backend_options=options)
            if rounds % 4 == 3:  # run_all_sync from a helper thread, while nothing else runs
                box: list[int] = []
                helper = threading.Thread(target=lambda out=box: out.append(round_sync(sched)))
                helper.start()
                helper.join()
                tasks += box[0] if box else 0
            rounds += 1
            time.sleep(args.pause)
        stats = sched.stats()

    if baseline is None:  # a run too short for its warm-up
        baseline = samples[0]
    tail = samples[-3:]
    end = {k: statistics.median(s[k] for s in tail) for k in ("rss_mb", "workers_rss_mb", "fds", "threads", "processes")}
    growth = {k: round(end[k] - baseline[k], 1) for k in end}
    failures = []
    if growth["rss_mb"] > args.rss_tolerance:
        failures.append(f"parent RSS grew by {growth['rss_mb']} MB (tolerance {args.rss_tolerance} MB)")
    for key in ("fds", "threads", "processes"):
        if growth[key] > args.count_tolerance:
            failures.append(f"{key} grew by {growth[key]} (tolerance {args.count_tolerance})")
    summary = {
        "minutes": args.minutes,
        "rounds": rounds,
        "tasks": tasks,
        "baseline": baseline,
        "end": end,
        "growth": growth,
        "peak_rss_mb": max(s["rss_mb"] for s in samples),
        "lanes": {k: {f: getattr(v, f) for f in ("completed", "failed", "timed_out", "cancelled", "crashed", "killed")} for k, v in stats.items()},
        "ok": not failures,
    }
    for line in failures:
        print(f"FAIL: {line}", flush=True)
    print("SUMMARY " + json.dumps(summary), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
