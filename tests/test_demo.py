"""``python -m tasklanes demo`` (tasklanes/_demo.py, __main__.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(120)
def test_demo_runs_and_prints_the_table() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "tasklanes", "demo", "--quick"],
        capture_output=True, text=True, timeout=110, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    rows = out.splitlines()
    for lane in ("io", "blocking", "cpu"):
        mine = [row for row in rows if row.startswith(f"{lane} ") and " ok" in row]
        # The serial row, the lane's row, and its row with a timeout and a failure.
        assert len(mine) >= 3, (lane, mine)
        assert sum("1 timed out, 1 failed" in row for row in mine) == 1, mine
        stats = [row.split() for row in rows if row.startswith("  ") and row.split()[:1] == [lane]]
        assert len(stats) == 1, (lane, out)
        capacity, completed, failed, timed_out = map(int, stats[0][1:5])
        assert capacity >= 1 and completed > 0 and failed >= 1 and timed_out >= 1, stats
    # Waits overlap: the io and blocking lanes beat their serial rows by far.
    for lane in ("io", "blocking"):
        serial, batched = [seconds(r) for r in rows if r.startswith(f"{lane} ") and " ok" in r][:2]
        assert batched < serial / 2, (lane, serial, batched)
    assert "Scheduler.stats()" in out
    assert time.monotonic() - start < 60


def seconds(row: str) -> float:
    """The seconds column of a demo row: the number just before its outcome."""
    match = re.search(r"\s(\d+\.\d+)\s+\d+ ok", row)
    assert match, row
    return float(match.group(1))


def test_unknown_command_is_an_error() -> None:
    from tasklanes.__main__ import main

    assert main(["frobnicate"]) == 2
    assert main(["--help"]) == 0


@pytest.mark.timeout(120)
def test_demo_prints_the_cpu_speed_up_and_what_bounds_it() -> None:
    import re

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "tasklanes", "demo", "--quick"],
        capture_output=True, text=True, timeout=110, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    # One row per run, each starting with its lane: 3 io, 3 blocking, 4 cpu.
    rows = [line for line in out.splitlines() if re.match(r"(io|blocking|cpu) {2,}", line)]
    lanes = [row.split()[0] for row in rows]
    assert lanes == ["io"] * 3 + ["blocking"] * 3 + ["cpu"] * 4, out
    # The speed-up is the two cpu rows' ratio, and the note names its bounds.
    serial, parallel = (float(re.findall(r" (\d+\.\d\d)  ", row)[0]) for row in rows[7:9])
    match = re.search(r"cpu speed-up: (\d+\.\d\d)x \(one after another (\d+\.\d\d) s, "
                      r"run_all (\d+\.\d\d) s\)", out)
    assert match, out
    assert float(match[2]) == pytest.approx(serial, abs=0.006)
    assert float(match[3]) == pytest.approx(parallel, abs=0.006)
    # the printed times are rounded to 10 ms: allow for that in their ratio
    rounding = 0.005 / serial + 0.005 / parallel
    assert float(match[1]) == pytest.approx(serial / parallel, rel=rounding + 0.01)
    from tasklanes._demo import usable_cpus

    cpus, source = usable_cpus()
    assert f"and {cpus} usable CPUs ({source})" in out
    assert "Load average over the last minute:" in out or "No load average" in out


def test_speedup_note_names_the_least_bound_and_the_load() -> None:
    from tasklanes._demo import speedup_note

    busy = speedup_note(2.0, 1.6, workers=4, tasks=4, cpus=(2, "os.process_cpu_count()"),
                        load=7.5)
    assert busy[0] == "cpu speed-up: 1.25x (one after another 2.00 s, run_all 1.60 s)."
    assert "At most 2x here" in busy[1]  # two CPUs bound four workers
    assert "7.50 on 2 CPUs" in busy[2] and "compete" in busy[2]
    idle = speedup_note(2.0, 1.0, workers=2, tasks=8, cpus=(16, "os.sched_getaffinity(0)"),
                        load=0.5)
    assert "At most 2x here" in idle[1] and "16 usable CPUs (os.sched_getaffinity(0))" in idle[1]
    assert "mostly free" in idle[2]
    assert "No load average" in speedup_note(1.0, 1.0, 1, 1, (1, "os.cpu_count()"), None)[2]
