"""The demo: the same work run serially and through each lane, with real timings.

Each lane gets the kind of work it exists for: awaits on ``io``, ``time.sleep`` (a
stand-in for a blocking driver) on ``blocking``, pure-Python arithmetic on ``cpu``.
Each batch also holds one task that overruns its timeout and one that fails, run
with ``return_exceptions=True`` so the table can show what happened to each.
"""

from __future__ import annotations

import os
import time
from typing import Any

import anyio

from ._api import run_all
from ._call import call
from ._errors import TaskTimeout
from ._scheduler import Scheduler

SLEEP = 0.02


async def wait_io(i: int) -> int:
    await anyio.sleep(SLEEP)
    return i


async def wait_io_too_long() -> int:
    await anyio.sleep(30)
    return -1


def wait_blocking(i: int) -> int:
    time.sleep(SLEEP)
    return i


def wait_blocking_too_long() -> int:
    # A thread cannot be killed; a polite blocking task checks now and then.
    from ._cancel import check_cancelled

    for _ in range(300):
        time.sleep(0.01)
        check_cancelled()
    return -1


def fail(i: int) -> int:
    raise ValueError(f"task {i} failed on purpose")


async def fail_io(i: int) -> int:
    raise ValueError(f"task {i} failed on purpose")


def crunch(n: int) -> int:
    """Pure-Python arithmetic: holds the GIL the whole time."""
    total = 0
    for i in range(n):
        total = (total + i * i) % 1_000_003
    return total


def spin_forever() -> int:
    while True:
        pass


def usable_cpus() -> tuple[int, str]:
    """The CPUs this process may run on (its affinity mask, not the machine's count),
    and the call that said so."""
    count = getattr(os, "process_cpu_count", None)  # Python 3.13+
    if count is not None:
        return int(count() or 1), "os.process_cpu_count()"
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)), "os.sched_getaffinity(0)"
    return os.cpu_count() or 1, "os.cpu_count()"


def load_average() -> float | None:
    """The 1-minute load average (runnable processes), where the system has one."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def speedup_note(
    serial: float,
    parallel: float,
    workers: int,
    tasks: int,
    cpus: tuple[int, str],
    load: float | None,
) -> list[str]:
    """What the cpu rows' speed-up is, and what bounds it on this machine."""
    cpu_count, source = cpus
    bound = min(workers, tasks, cpu_count)
    lines = [
        f"cpu speed-up: {serial / parallel:.2f}x (one after another {serial:.2f} s, "
        f"run_all {parallel:.2f} s).",
        f"  At most {bound}x here: the least of {workers} worker processes, {tasks} tasks "
        f"and {cpu_count} usable CPUs ({source}).",
    ]
    if load is None:
        lines.append("  No load average on this system: other programs may share the CPUs.")
    else:
        busy = "other programs compete for the CPUs, and the speed-up shrinks with them"
        idle = "the CPUs were mostly free for the demo"
        lines.append(
            f"  Load average over the last minute: {load:.2f} on {cpu_count} CPUs "
            f"(this demo included): {busy if load > cpu_count else idle}."
        )
    return lines


def _summary(results: list[Any]) -> str:
    ok = sum(1 for r in results if not isinstance(r, BaseException))
    timeouts = sum(1 for r in results if isinstance(r, TaskTimeout))
    failed = len(results) - ok - timeouts
    return f"{ok} ok, {timeouts} timed out, {failed} failed"


async def _demo(quick: bool) -> tuple[list[tuple[str, str, float, str]], list[str]]:
    n = 40 if quick else 100
    cpu_n = 2 if quick else 4
    work = 300_000 if quick else 3_000_000
    timeout = 0.5
    rows: list[tuple[str, str, float, str]] = []

    async def timed(lane: str, what: str, batch: Any) -> None:
        t = time.perf_counter()
        results = await batch
        rows.append((lane, what, time.perf_counter() - t, _summary(results)))

    with Scheduler() as sched:
        # -- io: waiting, on the event loop ------------------------------------------
        t = time.perf_counter()
        for i in range(n):
            await wait_io(i)
        rows.append(
            (
                "io",
                f"{n} x {SLEEP * 1e3:.0f} ms awaits, one after another",
                time.perf_counter() - t,
                f"{n} ok",
            )
        )
        await timed(
            "io",
            "the same, run_all(kind='io', limit=100)",
            run_all([call(wait_io, i) for i in range(n)], "io", limit=100, scheduler=sched),
        )
        mixed: list[Any] = [call(wait_io, i) for i in range(n)]
        mixed += [call(wait_io_too_long), call(fail_io, n + 1)]
        await timed(
            "io",
            f"  + 1 endless + 1 failing, timeout={timeout:g}, return_exceptions",
            run_all(
                mixed, "io", limit=100, timeout=timeout, return_exceptions=True, scheduler=sched
            ),
        )
        # -- blocking: waiting in sync code, on threads -------------------------------
        t = time.perf_counter()
        for i in range(n):
            wait_blocking(i)
        rows.append(
            (
                "blocking",
                f"{n} x time.sleep({SLEEP}), one after another",
                time.perf_counter() - t,
                f"{n} ok",
            )
        )
        await timed(
            "blocking",
            "the same, run_all(kind='blocking', limit=40)",
            run_all(
                [call(wait_blocking, i) for i in range(n)], "blocking", limit=40, scheduler=sched
            ),
        )
        bmixed: list[Any] = [call(wait_blocking, i) for i in range(n)]
        bmixed += [call(wait_blocking_too_long), call(fail, n + 1)]
        await timed(
            "blocking",
            f"  + 1 endless + 1 failing, timeout={timeout:g}, return_exceptions",
            run_all(
                bmixed,
                "blocking",
                limit=40,
                timeout=timeout,
                return_exceptions=True,
                scheduler=sched,
            ),
        )
        # -- cpu: computing, on processes ------------------------------------------
        # Starting the worker processes is paid once per program; time it apart, so
        # that the rows below compare the computing itself.
        capacity = sched.capacity("cpu")
        await timed(
            "cpu",
            f"start the pool: {capacity} worker processes, once",
            run_all([call(crunch, 1) for _ in range(capacity)], "cpu", scheduler=sched),
        )
        t = time.perf_counter()
        for _ in range(cpu_n):
            crunch(work)
        rows.append(
            (
                "cpu",
                f"{cpu_n} x crunch({work:,}), one after another",
                time.perf_counter() - t,
                f"{cpu_n} ok",
            )
        )
        await timed(
            "cpu",
            f"the same, run_all(kind='cpu'), {capacity} processes",
            run_all([call(crunch, work) for _ in range(cpu_n)], "cpu", scheduler=sched),
        )
        note = speedup_note(
            rows[-2][2], rows[-1][2], capacity, cpu_n, usable_cpus(), load_average()
        )
        cmixed: list[Any] = [call(crunch, work) for _ in range(cpu_n)]
        cmixed += [call(spin_forever), call(fail, cpu_n + 1)]
        await timed(
            "cpu",
            f"  + 1 endless + 1 failing, timeout={timeout * 2:g}, return_exceptions",
            run_all(cmixed, "cpu", timeout=timeout * 2, return_exceptions=True, scheduler=sched),
        )
        stats = sched.stats()
    _print_table(rows)
    print("\n".join(note))
    print()
    _print_stats(stats)
    return rows, note


def _print_table(rows: list[tuple[str, str, float, str]]) -> None:
    print()
    print(f"{'lane':<9} {'what ran':<66} {'seconds':>8}  outcome")
    print("-" * 110)
    for lane, what, seconds, outcome in rows:
        print(f"{lane:<9} {what:<66} {seconds:8.2f}  {outcome}")
    print()


def _print_stats(stats: dict[str, Any]) -> None:
    print("Scheduler.stats() after the demo:")
    cols = ["capacity", "completed", "failed", "timed_out", "cancelled", "crashed", "killed"]
    print(
        f"  {'lane':<9}" + "".join(f"{c:>10}" for c in cols) + f"{'wait max':>11}{'run mean':>11}"
    )
    for kind, snap in stats.items():
        line = f"  {kind:<9}" + "".join(f"{snap[c]:>10}" for c in cols)
        line += f"{snap.wait.max * 1e3:>9.1f}ms{snap.run.mean * 1e3:>9.1f}ms"
        print(line)
    print()
    print("io waits overlap on one thread; blocking waits overlap on threads; cpu work")
    print("needs processes, because pure-Python computing holds the GIL. Each endless")
    print("task failed with TaskTimeout at its timeout: the io task was cancelled, the")
    print("blocking one saw check_cancelled() raise, the cpu one's process was killed.")


def run_demo(quick: bool = False) -> int:
    print("tasklanes demo: the same work, serially and through each lane")
    anyio.run(_demo, quick)
    return 0
