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
