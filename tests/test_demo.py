"""``python -m tasklanes demo`` (tasklanes/_demo.py, __main__.py)."""

from __future__ import annotations

import os
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
    for lane in ("io", "blocking", "cpu"):
        assert f"\\n{lane} " in out.replace("\\n", "\\n") or f"{lane} " in out
    assert "1 timed out, 1 failed" in out
    assert "Scheduler.stats()" in out
    assert time.monotonic() - start < 60


def test_unknown_command_is_an_error() -> None:
    from tasklanes.__main__ import main

    assert main(["frobnicate"]) == 2
    assert main(["--help"]) == 0
