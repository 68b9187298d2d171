"""Helpers shared by the tests: waiting for a condition, asking whether a process
lives, running a script as a user would. One definition each, so that every test
means the same thing by them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tasklanes

#: The folder that holds the package under test: a script run in a fresh interpreter
#: imports this tasklanes, whatever is installed.
SRC = Path(tasklanes.__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], object], seconds: float = 10.0, what: str = "") -> bool:
    """Poll ``predicate`` until it is true; raise ``AssertionError`` after ``seconds``.

    Returns True, so ``assert wait_for(...)`` reads naturally too.
    """
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what or predicate}")
        time.sleep(0.01)
    return True


def pid_running(pid: int) -> bool:
    """True while ``pid`` runs: a zombie (exited, not yet reaped) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        if not os.path.isdir("/proc"):  # pragma: no cover - no procfs
            return pid_exists(pid)
        return False
    return state not in ("Z", "X")


def pid_exists(pid: int) -> bool:
    """True until ``pid`` is reaped: a zombie still exists (its parent has not waited
    for it), which is what a test of the parent's cleanup must see as not done."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's process
        return True
    return True


def tasklanes_threads() -> list[str]:
    """The names of the live threads tasklanes started."""
    import threading

    return [t.name for t in threading.enumerate() if t.name.startswith("tasklanes")]


def run_json_script(tmp_path: Path, body: str, *args: str, timeout: float = 50) -> dict[str, Any]:
    """Run ``body`` (dedented) as ``tmp_path/job.py`` in a fresh interpreter, with only
    the package under test on its path, and return the JSON object its last line of
    output prints (plus its ``stdout`` and ``stderr``). Fails the test if it exits
    with an error."""
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(body))
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    out["stderr"] = proc.stderr
    out["stdout"] = proc.stdout
    return out
