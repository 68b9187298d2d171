"""Helpers shared by the tests: waiting for a condition, and asking whether a process
lives. One definition each, so that every test means the same thing by them."""

from __future__ import annotations

import os
import time
from collections.abc import Callable


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
