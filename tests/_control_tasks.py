"""Module-level tasks for tests/test_control.py (cpu tasks pickle by reference)."""

from __future__ import annotations

import os
import time


def stamp(path: str, seconds: float) -> tuple[float, float]:
    """Sleep, and return (start, end) on the wall clock shared by every process."""
    start = time.time()
    time.sleep(seconds)
    return (start, time.time())


def fail_until(path: str, failures: int, value: object) -> object:
    """Raise ConnectionError on the first `failures` calls (counted in a file), then return."""
    with open(path, "a+") as f:
        f.seek(0)
        count = len(f.read())
        f.write("x")
    if count < failures:
        raise ConnectionResetError(f"attempt {count + 1} reset")
    return value


def crash_once(path: str) -> str:
    """Kill the worker the first time (a WorkerCrashed), succeed the next."""
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write("crashed")
        os._exit(3)
    return "ok"


def pid_gone(path: str) -> bool:
    """Whether the process whose pid is in `path` is gone (reaped)."""
    with open(path) as f:
        pid = int(f.read())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False
