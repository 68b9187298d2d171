"""Loop blocking: no tasklanes call holds up the caller's event loop.

A probe task on the loop sleeps 2 ms at a time and records how late it wakes up (the
loop lag) while tasklanes works on the same loop: the cpu pool's cold start (the
forkserver is not running yet), big and small batches on every lane, timeouts and
cancellation that kill workers, crashes, the iterators, ``offload``, and closing
schedulers from async code (``async with Scheduler()``, ``await sched.aclose()``).

It runs in a fresh subprocess per event loop, so that the start-up is really cold and
nothing else of the test run shares the process. The bound is generous for a noisy
shared machine: the loop's thread may not run code for more than 50 ms at once (its
CPU time between two wake-ups of the probe; a healthy run shows a few ms), nor wake up
more than 300 ms late for any reason (that catches a blocking wait: a join, a sleep).
A phase over a bound is run once more before the test fails: a blocking call lags
every time, a busy machine once.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tasklanes

pytestmark = [pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parent.parent
SRC = Path(tasklanes.__file__).resolve().parent.parent  # the tasklanes under test
# The loop's thread ran code (tasklanes' or the tasks') for this long without a break:
BUSY_BOUND = 0.050  # seconds
# The loop woke up this late, whatever the reason: a blocking wait (a join, a sleep) on
# the loop, or a loaded machine (two shared cores: a 20k-task batch can keep the loop's
# thread waiting for a CPU for ~100 ms while the workers and the pool's thread run).
LAG_BOUND = 0.300

SCRIPT = textwrap.dedent(
    r'''
    import json, sys, time

    import anyio

    import tasklanes
    from tasklanes import Scheduler, call, get_scheduler, run_all
    import tests._reliability_tasks as T

    TICK = 0.002


    class Probe:
        """Sleeps TICK at a time. The overshoot of each sleep is the loop's lag; the
        part of it that the loop's thread spent on the CPU (its thread time) is the
        time the loop was *busy*: code running on it. The rest is the thread waiting,
        for the CPU (a loaded machine) or in a blocking wait (a join, a sleep)."""

        def __init__(self):
            self.phase = None
            self.lag = {}
            self.busy = {}

        async def run(self):
            while True:
                t0 = time.perf_counter()
                c0 = time.thread_time()
                await anyio.sleep(TICK)
                lag = time.perf_counter() - t0 - TICK
                busy = min(lag, time.thread_time() - c0)
                phase = self.phase
                if phase is not None:
                    self.lag[phase] = max(lag, self.lag.get(phase, 0.0))
                    self.busy[phase] = max(busy, self.busy.get(phase, 0.0))


    async def io_task(i):
        await anyio.sleep(0.001)
        return i


    async def main():
        probe = Probe()
        sched = Scheduler(cpu_limit=2, blocking_limit=8)

        async def cpu_cold():
            # The first cpu batch of the process: forkserver and workers start now.
            assert await sched.run_all([call(T.square, i) for i in range(4)], "cpu") == [0, 1, 4, 9]

        async def cpu_many():
            out = await sched.run_all([call(T.square, i) for i in range(20_000)], "cpu")
            assert out[-1] == 19_999**2

        async def cpu_timeouts():
            tasks = [call(T.sleep_then, 5.0, i) for i in range(3)]
            out = await sched.run_all(tasks, "cpu", timeout=0.3, return_exceptions=True)
            assert all(type(x) is tasklanes.TaskTimeout for x in out), out

        async def cpu_cancel():
            with anyio.move_on_after(0.3):
                await sched.run_all([call(T.sleep_then, 5.0, i) for i in range(4)], "cpu")

        async def cpu_crash():
            tasks = [call(T.square, 1), call(T.exit_now, 3), call(T.segfault), call(T.square, 2)]
            out = await sched.run_all(tasks, "cpu", return_exceptions=True)
            assert type(out[1]) is tasklanes.WorkerCrashed and out[3] == 4, out

        async def cpu_iterators():
            seen = {i async for i, _ in sched.as_completed([call(T.square, i) for i in range(200)], "cpu")}
            assert seen == set(range(200))
            out = [x async for x in sched.amap(T.square, range(200), "cpu", limit=2)]
            assert out == [i * i for i in range(200)]
            out = [x async for x in sched.amap(T.square, range(200), "cpu", limit=2, ordered=False)]
            assert sorted(out) == [i * i for i in range(200)]
            assert await T.offloaded_square(7) == 49

        async def blocking():
            out = await sched.run_all(
                [call(T.sleep_then, 0.002, i) for i in range(400)], "blocking", limit=8
            )
            assert out == list(range(400))
            tasks = [call(T.cooperative_sleep, 5.0) for _ in range(4)]
            out = await sched.run_all(tasks, "blocking", timeout=0.2, return_exceptions=True)
            assert all(type(x) is tasklanes.TaskTimeout for x in out), out
            with anyio.move_on_after(0.2):
                await sched.run_all([call(T.cooperative_sleep, 5.0) for _ in range(4)], "blocking")

        async def io():
            out = await sched.run_all([call(io_task, i) for i in range(2000)], limit=100)
            assert out == list(range(2000))
            with anyio.move_on_after(0.1):
                await sched.run_all([call(anyio.sleep, 5) for _ in range(100)])

        async def close_scheduler():
            await sched.aclose()

        async def async_with_scheduler():
            # Start-up and shutdown of a second pool, closed by ``async with``.
            async with Scheduler(cpu_limit=2, blocking_limit=2) as s2:
                assert await s2.run_all([call(T.square, i) for i in range(50)], "cpu", limit=2) == [
                    i * i for i in range(50)
                ]
                await s2.run_all([call(T.sleep_then, 0.01) for _ in range(4)], "blocking")
                with anyio.move_on_after(0.2):  # leave it with killed workers to replace
                    await s2.run_all([call(T.sleep_then, 5.0) for _ in range(2)], "cpu")

        async def default_scheduler():
            # The process-wide default: created on first use, closed from async code.
            assert await run_all([call(T.square, 3)], "cpu") == [9]
            assert await run_all([call(T.square, 4)], "blocking") == [16]
            await get_scheduler().aclose()

        phases = [
            ("cpu pool cold start", cpu_cold),
            ("cpu 20k tiny tasks", cpu_many),
            ("cpu timeouts (workers killed)", cpu_timeouts),
            ("cpu batch cancelled (workers killed)", cpu_cancel),
            ("cpu crashes", cpu_crash),
            ("cpu as_completed, amap, offload", cpu_iterators),
            ("blocking batches, timeouts, cancel", blocking),
            ("io batches, cancel", io),
            ("Scheduler.aclose()", close_scheduler),
            ("async with Scheduler(): start-up and close", async_with_scheduler),
            ("default scheduler: first use and aclose()", default_scheduler),
        ]
        report = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(probe.run)
            await anyio.sleep(0.05)
            for name, fn in phases:
                probe.phase = name
                t0 = time.perf_counter()
                print("PHASE " + name, flush=True)
                with anyio.fail_after(20):  # a hang names its phase
                    await fn()
                await anyio.sleep(3 * TICK)  # let the probe see the tail of the phase
                probe.phase = None
                report[name] = {
                    "lag": probe.lag.get(name, 0.0),
                    "busy": probe.busy.get(name, 0.0),
                    "seconds": time.perf_counter() - t0,
                }
            tg.cancel_scope.cancel()
        if not sched.closed:
            await sched.aclose()
        return report


    if __name__ == "__main__":
        backend, options = sys.argv[1], json.loads(sys.argv[2])
        report = anyio.run(main, backend=backend, backend_options=options)
        print("REPORT " + json.dumps(report), flush=True)
    '''
)

BACKENDS = [pytest.param(("asyncio", {}), id="asyncio")]
if importlib.util.find_spec("uvloop") is not None:
    BACKENDS.append(pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"))
BACKENDS.append(pytest.param(("trio", {}), id="trio"))


def run_script(tmp: Path, backend: str, options: dict[str, object]) -> dict[str, dict[str, float]]:
    script = tmp / "loop_lag.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), str(ROOT)]))
    argv = [sys.executable, str(script), backend, json.dumps(options)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=100)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("REPORT ")), None)
    assert proc.returncode == 0 and line is not None, f"{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    report: dict[str, dict[str, float]] = json.loads(line[7:])
    return report


def over(report: dict[str, dict[str, float]]) -> list[str]:
    return [
        name for name, r in report.items() if r["busy"] > BUSY_BOUND or r["lag"] > LAG_BOUND
    ]


@pytest.mark.parametrize("loop", BACKENDS)
def test_no_call_blocks_the_event_loop(tmp_path: Path, loop: tuple[str, dict[str, object]]) -> None:
    backend, options = loop
    report = run_script(tmp_path, backend, options)
    assert len(report) == 11, report
    lagging = over(report)
    if lagging:  # once more (a fresh process: cold again), to tell a blocking call
        # (it lags every time) from a busy machine (once)
        again = run_script(tmp_path, backend, options)
        lagging = [name for name in lagging if name in over(again)]
        report = {name: max(report[name], again[name], key=lambda r: r["busy"]) for name in report}
    table = "\n".join(
        f"  {name:45} busy {r['busy'] * 1000:6.1f} ms  lag {r['lag'] * 1000:6.1f} ms  ({r['seconds']:.2f} s)"
        for name, r in report.items()
    )
    print(f"\nloop on {backend} {options or ''}:\n{table}")
    assert not lagging, (
        f"the event loop was busy for more than {BUSY_BOUND * 1000:.0f} ms at once, or "
        f"lagged more than {LAG_BOUND * 1000:.0f} ms:\n{table}"
    )
