"""The cpu lane against its floor (issue 14), case by case.

Warm cases alternate the contenders in this process (one warm pool each); whole-process
cases run each contender as a fresh ``python script.py``, alternated round by round.
Medians of ``--rounds``; the ratio is tasklanes / the peer.

* ``warm_list``: 20k trivial tasks on a warm pool, list input, vs
  ``ProcessPoolExecutor(w).map(fn, items, chunksize=n / (4 w))`` warm (target <= 1.5x);
* ``warm_gen``: the same with a generator input (target <= 2x);
* ``oneshot``: a whole script (interpreter, imports, pool start, 8 tiny tasks, exit)
  vs the same with ``ProcessPoolExecutor`` (target <= 1.3x);
* ``oneshot_heavy``: 8 x ~0.2 s tasks, whole process, vs ``PPE.map`` (target <= 1.05x);
* ``big``: one 200 MB bytes result on a warm pool: call time vs
  ``multiprocessing.Pool().apply`` (target <= 1.1x) and the parent's peak RSS growth
  over the result's size (target <= 1.5x).

Run: ``python benchmarks/bench_cpu_floor.py [--rounds 5] [--only warm,oneshot,heavy,big]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_tasks as B  # noqa: E402


def workers() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def show(name: str, runs: dict[str, list[float]], target: float | None, unit: str = "s") -> None:
    """Medians, and each contender's ratio to the peer (the second entry)."""
    names = list(runs)
    meds = {k: statistics.median(v) for k, v in runs.items()}
    peer = names[1]
    print(f"\n[{name}]")
    for k in names:
        print(f"  {k:<48} median {meds[k]:.4f} {unit}  (min {min(runs[k]):.4f})")
    goal = f" (target <= {target})" if target else ""
    for k in names:
        if k != peer:
            print(f"  ratio {k} / peer: {meds[k] / meds[peer]:.2f}{goal}", flush=True)


def alternate(contenders: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    runs: dict[str, list[float]] = {k: [] for k in contenders}
    for fn in contenders.values():
        fn()  # warm-up, untimed
    for _ in range(rounds):
        for k, fn in contenders.items():
            gc.collect()
            t0 = time.perf_counter()
            fn()
            runs[k].append(time.perf_counter() - t0)
    return runs


def bench_warm(rounds: int, n: int) -> None:
    from tasklanes import Scheduler, call

    w = workers()
    chunk = max(1, n // (4 * w))
    ppe = ProcessPoolExecutor(w)
    sched = Scheduler()
    peer = f"PPE({w}).map chunksize {chunk}"

    def ours_list() -> Any:
        return asyncio.run(sched.run_all([call(B.inc, i) for i in range(n)], kind="cpu"))

    def ours_gen() -> Any:
        return asyncio.run(sched.run_all((call(B.inc, i) for i in range(n)), kind="cpu"))

    try:
        runs = alternate(
            {"tasklanes list": ours_list,
             peer: lambda: list(ppe.map(B.inc, list(range(n)), chunksize=chunk))}, rounds)
        show(f"warm_list: {n:,} trivial tasks, list input", runs, 1.5)
        runs = alternate(
            {"tasklanes generator": ours_gen,
             peer: lambda: list(ppe.map(B.inc, (i for i in range(n)), chunksize=chunk))},
            rounds)
        show(f"warm_gen: {n:,} trivial tasks, generator input", runs, 2.0)
    finally:
        sched.close()
        ppe.shutdown()


SCRIPTS = {
    "tasklanes": """
from tasklanes import call, run_all_sync

def work(x):
{work}

if __name__ == "__main__":
    r = run_all_sync([call(work, a) for a in {args}], kind="cpu")
    assert len(r) == len({args})
""",
    "ProcessPoolExecutor().map": """
from concurrent.futures import ProcessPoolExecutor

def work(x):
{work}

if __name__ == "__main__":
    with ProcessPoolExecutor() as pool:
        r = list(pool.map(work, {args}))
    assert len(r) == len({args})
""",
    # For comparison, not a target: the same with the `fork` start method (no
    # forkserver to start, no re-import of the main module).
    "tasklanes, mp_context='fork'": """
from tasklanes import Scheduler, call

def work(x):
{work}

if __name__ == "__main__":
    with Scheduler(mp_context="fork") as s:
        r = s.run_all_sync([call(work, a) for a in {args}], kind="cpu")
    assert len(r) == len({args})
""",
}
TINY = "    return x + 1"
BURN = """    total = 0
    for i in range(x):
        total += i * i % 7
    return total"""


def run_script(path: Path, env: dict[str, str]) -> float:
    # Output to files, not pipes: a straggling worker must not hold us on a pipe.
    # No `timeout=` on the wait: with one, subprocess polls the child with sleeps of up
    # to 50 ms, and every figure came out rounded up to the next poll (64 and 114 ms
    # for scripts of 55 and 70). A timer kills a child that hangs instead.
    import threading

    with tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, str(path)], stdout=out, stderr=out,
                                cwd=str(HERE), env=env)
        watchdog = threading.Timer(300, proc.kill)
        watchdog.start()
        try:
            code = proc.wait()
        finally:
            watchdog.cancel()
        elapsed = time.perf_counter() - t0
        if code != 0:
            raise subprocess.CalledProcessError(code, proc.args)
        return elapsed


def bench_scripts(name: str, work: str, args: str, rounds: int, target: float) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and "site-packages" not in p)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for i, (k, code) in enumerate(SCRIPTS.items()):
            paths[k] = Path(tmp) / f"script_{i}.py"
            paths[k].write_text(code.format(work=work, args=args))
        for p in paths.values():
            run_script(p, env)  # page cache
        runs: dict[str, list[float]] = {k: [] for k in paths}
        for _ in range(rounds):
            for k, p in paths.items():
                runs[k].append(run_script(p, env))
    show(name, runs, target)


BIG_PRELUDE = """
import gc, json, sys, time
sys.path.insert(0, {here!r})
import bench_tasks as B

SIZE = {size}

def status(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024

def measure(call_big):
    gc.collect()
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # reset VmHWM: the peak below is the call's own
    except OSError:
        pass
    base = status('VmRSS:')
    t0 = time.perf_counter()
    r = call_big()
    elapsed = time.perf_counter() - t0
    assert len(r) == SIZE
    print(json.dumps({{'seconds': elapsed, 'peak_mb': status('VmHWM:'), 'base_mb': base}}))
"""

BIG_CODE = {
    "tasklanes": """
from tasklanes import Scheduler, call
with Scheduler() as sched:
    sched.run_all_sync([call(B.inc, 1)], kind='cpu')  # warm: the pool is up
    measure(lambda: sched.run_all_sync([call(B.big_bytes, SIZE)], kind='cpu')[0])
""",
    "multiprocessing.Pool().apply": """
import multiprocessing
with multiprocessing.Pool() as pool:
    pool.apply(B.inc, (1,))
    measure(lambda: pool.apply(B.big_bytes, (SIZE,)))
""",
}


def bench_big(rounds: int, mb: int) -> None:
    size = mb * 2**20
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and "site-packages" not in p)
    secs: dict[str, list[float]] = {k: [] for k in BIG_CODE}
    over: dict[str, list[float]] = {k: [] for k in BIG_CODE}
    for _ in range(rounds):
        for k, body in BIG_CODE.items():
            code = BIG_PRELUDE.format(here=str(HERE), size=size) + body
            with tempfile.TemporaryFile("w+") as out:
                subprocess.run([sys.executable, "-c", code], stdout=out, check=True, env=env,
                               timeout=600)
                out.seek(0)
                line = [ln for ln in out.read().splitlines() if ln.startswith("{")][-1]
            got = json.loads(line)
            secs[k].append(got["seconds"])
            over[k].append((got["peak_mb"] - got["base_mb"]) / mb)
    show(f"big: one {mb} MB bytes result, call time", secs, 1.1)
    show(f"big: parent peak RSS growth / result size ({mb} MB)", over, None, unit="x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--only", default="warm,oneshot,heavy,big")
    args = ap.parse_args()
    only = set(args.only.split(","))
    import tasklanes

    print(f"tasklanes from {tasklanes.__file__}; load {os.getloadavg()[0]:.1f}")
    if "warm" in only:
        bench_warm(args.rounds, args.n)
    if "oneshot" in only:
        bench_scripts("oneshot: whole script, 8 tiny tasks", TINY, "range(8)", args.rounds, 1.3)
    if "heavy" in only:
        it = B.calibrate(0.2)
        bench_scripts("oneshot_heavy: whole script, 8 x 0.2 s tasks", BURN, f"[{it}] * 8",
                      args.rounds, 1.05)
    if "big" in only:
        bench_big(args.rounds, args.mb)


if __name__ == "__main__":
    main()
