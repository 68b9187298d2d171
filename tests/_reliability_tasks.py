"""Module-level task functions for the reliability tests.

cpu tasks must pickle by reference, so they live here (an importable module), not in
the test files. They report what happened to them through files in a directory the
test gives them: that is the one channel that works across worker processes, even
for a worker that is killed or crashes.

Files written by :func:`probe` in ``d``:

* ``start-<i>``: created exclusively when task ``i`` starts (a second start of the
  same index is recorded as ``dup-<i>``); holds the worker's pid;
* ``run-<i>``: present while task ``i`` runs (holds the pid);
* ``conc-<i>``: how many tasks were running when ``i`` started, itself included
  (counting only ``run-*`` files whose process is still alive: a killed worker
  cannot remove its file);
* ``end-<i>``: written when task ``i`` leaves its body (returned, raised, or was
  stopped in a way that runs ``finally``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import tasklanes

from ._helpers import pid_running

# ------------------------------------------------------------------ helpers


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.{threading.get_ident()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _count_running(d: Path) -> int:
    n = 0
    for entry in os.listdir(d):
        if not entry.startswith("run-"):
            continue
        try:
            pid = int((d / entry).read_text() or 0)
        except (OSError, ValueError):
            continue
        if pid_running(pid):
            n += 1
    return n


# ------------------------------------------------------------------ the probe task


def probe(d: str, index: int, action: str, arg: float = 0.0) -> Any:
    """One task of a property-test batch, for the cpu lane (and usable anywhere).

    ``action``: ``ok`` (return ``index * 10``), ``slow`` (sleep ``arg`` first),
    ``raise`` (raise ``ValueError``), ``hang`` (sleep ``arg`` seconds: meant to
    overrun the batch's timeout), ``crash`` (``os._exit(7)``).
    """
    base = Path(d)
    pid = os.getpid()
    try:
        fd = os.open(base / f"start-{index}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        _write(base / f"dup-{index}", str(pid))
    else:
        os.write(fd, str(pid).encode())
        os.close(fd)
    # A pid per *task*: a worker process runs one task at a time, so the pid says
    # whether the process that ran the task is still alive.
    _write(base / f"run-{index}", str(pid))
    _write(base / f"conc-{index}", str(_count_running(base)))
    try:
        if action == "slow" or action == "hang":
            time.sleep(arg)
        elif action == "raise":
            raise ValueError(f"boom {index}")
        elif action == "crash":
            with contextlib.suppress(OSError):
                os.unlink(base / f"run-{index}")
            _write(base / f"end-{index}", "crash")
            os._exit(7)
        return index * 10
    finally:
        with contextlib.suppress(OSError):
            os.unlink(base / f"run-{index}")
        _write(base / f"end-{index}", "end")


def probe_item(item: tuple[str, int, str, float]) -> Any:
    """`probe` for `amap`, whose function takes one item: ``(d, index, action, arg)``."""
    return probe(*item)


def started(d: str | Path) -> dict[int, int]:
    """index -> pid of every task that started."""
    out = {}
    for entry in os.listdir(d):
        if entry.startswith("start-") and ".tmp" not in entry:
            out[int(entry[6:])] = int(Path(d, entry).read_text() or 0)
    return out


def prefixed(d: str | Path, prefix: str) -> dict[int, str]:
    out = {}
    for entry in os.listdir(d):
        if entry.startswith(prefix) and ".tmp" not in entry:
            out[int(entry[len(prefix) :])] = Path(d, entry).read_text()
    return out


# ------------------------------------------------------------------ simple tasks


def square(x: int) -> int:
    return x * x


def sleep_then(seconds: float, value: object = None) -> object:
    time.sleep(seconds)
    return value


def spin(seconds: float) -> int:
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


def record_pid(path: str) -> int:
    _write(Path(path), str(os.getpid()))
    return os.getpid()


def count_side_effect(path: str) -> int:
    """Appends a line to ``path``: a side effect the bad-input tests look for."""
    with open(path, "a") as f:
        f.write("ran\n")
    return 1


def add(a: int, b: int) -> int:
    return a + b


# ------------------------------------------------------------------ faults


def exit_now(code: int = 3) -> None:
    os._exit(code)


def segfault() -> None:
    ctypes.string_at(0)


def memory_error() -> None:
    # A real failed allocation, not a raised instance.
    bytearray(1 << 62)


def pid_then_sleep(path: str, seconds: float) -> int:
    """Tell the test which process runs us (so it can kill it), then sleep."""
    _write(Path(path), str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()


def ignore_sigterm_and_hang(path: str, seconds: float) -> int:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _write(Path(path), str(os.getpid()))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # sleep in slices: a signal must not wake us for good
        time.sleep(0.05)
    return os.getpid()


def unpicklable_result() -> object:
    return threading.Lock()


def big_result(size: int) -> bytes:
    return b"x" * size


def fork_and_exit_child(path: str) -> int:
    """Fork; the child exits at once with ``os._exit``; the parent reaps it."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    _write(Path(path), str(pid))
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def fork_and_leave_child(path: str) -> int:
    """Fork; the child lingers a little (sleeping) and then exits; not reaped by us."""
    pid = os.fork()
    if pid == 0:
        time.sleep(0.3)
        os._exit(0)
    _write(Path(path), str(pid))
    return pid


# ------------------------------------------------------------------ blocking helpers


def cooperative_sleep(seconds: float, path: str | None = None) -> float:
    """A blocking task that honours cancellation: sleeps in slices, calling
    ``check_cancelled()`` between them."""
    if path is not None:
        _write(Path(path), str(threading.get_ident()))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        tasklanes.check_cancelled()
        time.sleep(0.01)
    return seconds


# ------------------------------------------------------------------ offload targets


@tasklanes.offload(kind="cpu")
def offloaded_square(x: int) -> int:
    return x * x


# ------------------------------------------------------------------ process-wide helpers


def warm_forkserver() -> None:
    """Start the process-wide forkserver (and with it multiprocessing's resource
    tracker) the way the cpu lane would, so that the per-test leak check does not
    count these two process-lifetime singletons against the first test that happens
    to use the cpu lane. (conftest excludes the forkserver but not the tracker.)"""
    from multiprocessing import forkserver

    from tasklanes._processes._pool import default_context

    default_context()
    forkserver.ensure_running()


def load_cpu(d: str, call_id: int, i: int, seconds: float) -> tuple[int, int]:
    """A cpu task of the load test: records how many cpu tasks (of all calls, and of
    its own call) ran when it started, then sleeps."""
    base = Path(d)
    key = f"{call_id}_{i}"
    _write(base / f"run-{key}", str(os.getpid()))
    total = _count_running(base)
    mine = 0
    for entry in os.listdir(base):
        if entry.startswith(f"run-{call_id}_") and ".tmp" not in entry:
            with contextlib.suppress(OSError, ValueError):
                if pid_running(int((base / entry).read_text() or 0)):
                    mine += 1
    _write(base / f"conc-{key}", f"{total} {mine}")
    try:
        time.sleep(seconds)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(base / f"run-{key}")
    return (call_id, i)
