"""What each start method costs before the first cpu result: the default (a zygote in a
single-threaded process), fork, forkserver, spawn.

    PYTHONPATH=src python benchmarks/bench_start_methods.py [--rounds 5]

For each start method, in a fresh Python process each round:

* first result: from `Scheduler(mp_context=...)` to the result of a one-task cpu batch
  (worker start-up included, and the forkserver's own start for forkserver);
* again: the same with a second, fresh Scheduler in the same process (the forkserver
  already runs: what a notebook pays for each new Scheduler after the first);
* whole script: the wall time of `python script.py` that imports tasklanes and runs
  that one-task batch, from launch to exit, next to the same script without the batch
  (so the difference is what the cpu lane adds to a one-shot script).

Prints medians over the rounds, as a Markdown table (docs/start-methods.md quotes it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")

CHILD = """
import json, math, sys, time
from tasklanes import Scheduler, call

def first_result(method):
    t0 = time.perf_counter()
    with Scheduler(mp_context=method) as sched:
        assert sched.run_all_sync([call(math.factorial, 20)], kind="cpu")
        return time.perf_counter() - t0

if __name__ == "__main__":
    method = None if sys.argv[1] == "default" else sys.argv[1]
    print(json.dumps({"first": first_result(method), "again": first_result(method)}))
"""

SCRIPT = """
import math, sys
from tasklanes import run_all_sync, call, Scheduler
if __name__ == "__main__" and sys.argv[1] != "none":
    with Scheduler(mp_context=None if sys.argv[1] == "default" else sys.argv[1]) as sched:
        sched.run_all_sync([call(math.factorial, 20)], kind="cpu")
"""


def run_python(code_path: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        # fork with threads alive: Python 3.12+ warns (docs/start-methods.md)
        [sys.executable, "-W", "ignore::DeprecationWarning", code_path, *args],
        capture_output=True, text=True, env=env, check=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import tempfile

    methods = ["default", "fork", "forkserver", "spawn"]
    with tempfile.TemporaryDirectory() as tmp:
        child = os.path.join(tmp, "child.py")
        script = os.path.join(tmp, "script.py")
        with open(child, "w") as f:
            f.write(CHILD)
        with open(script, "w") as f:
            f.write(SCRIPT)
        first: dict[str, list[float]] = {m: [] for m in methods}
        again: dict[str, list[float]] = {m: [] for m in methods}
        whole: dict[str, list[float]] = {m: [] for m in [*methods, "none"]}
        for _ in range(args.rounds):
            for method in methods:  # interleaved, so that load drifts hit all alike
                out = json.loads(run_python(child, method).stdout)
                first[method].append(out["first"])
                again[method].append(out["again"])
            for method in whole:
                t0 = time.perf_counter()
                run_python(script, method)
                whole[method].append(time.perf_counter() - t0)

    def ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1e3:.0f} ms"

    baseline = statistics.median(whole["none"])
    print(
        f"Python {platform.python_version()}, {platform.system()}, "
        f"{len(os.sched_getaffinity(0))} CPUs, medians of {args.rounds}\n"
    )
    print("| start method | first result, fresh process | first result, next Scheduler "
          "| one-shot script (cpu lane's share) |")
    print("|---|---|---|---|")
    for method in methods:
        script_ms = statistics.median(whole[method])
        print(
            f"| {method} | {ms(first[method])} | {ms(again[method])} "
            f"| {script_ms * 1e3:.0f} ms (+{(script_ms - baseline) * 1e3:.0f} ms) |"
        )
    print(f"\nthe same script without the cpu batch: {baseline * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
