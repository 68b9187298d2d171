"""Shared fixtures: every async test runs on asyncio, uvloop and trio, and every test
fails if it leaves a thread, a child process or a file descriptor behind."""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
import time
from collections.abc import Iterator

import pytest

import tasklanes
from tasklanes import _scheduler

_BACKENDS = [pytest.param(("asyncio", {}), id="asyncio")]
if importlib.util.find_spec("uvloop") is not None and sys.platform != "win32":
    _BACKENDS.append(pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"))
_BACKENDS.append(pytest.param(("trio", {}), id="trio"))
# CI's extra Python versions run on asyncio and trio only (TASKLANES_TEST_BACKENDS=
# asyncio,trio in .ci/run): uvloop is a third-party loop, covered on the main version.
if os.environ.get("TASKLANES_TEST_BACKENDS"):
    _wanted = set(os.environ["TASKLANES_TEST_BACKENDS"].split(","))
    _BACKENDS = [param for param in _BACKENDS if param.id in _wanted]


@pytest.fixture(params=_BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    return request.param  # type: ignore[no-any-return]


def child_pids() -> set[int]:
    """Live children of this process, read from /proc (Linux) or multiprocessing."""
    me = os.getpid()
    pids: set[int] = set()
    if os.path.isdir("/proc"):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == me and fields[0] != "Z":
                pids.add(int(entry))
    else:  # pragma: no cover
        import multiprocessing

        pids = {p.pid for p in multiprocessing.active_children() if p.pid}
    return pids


def forkserver_pid() -> int | None:
    """The standard library's forkserver is shared by the whole process and lives until
    exit by design; it is not a leak of any one test."""
    try:
        from multiprocessing import forkserver

        pid: int | None = forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]
        return pid
    except (ImportError, AttributeError):  # pragma: no cover
        return None


def resource_tracker_pid() -> int | None:
    """multiprocessing's resource tracker starts with the forkserver and, like it, lives
    until the process exits."""
    try:
        from multiprocessing import resource_tracker

        pid: int | None = resource_tracker._resource_tracker._pid  # type: ignore[attr-defined]
        return pid
    except (ImportError, AttributeError):  # pragma: no cover
        return None


def is_runtime_thread(thread: threading.Thread) -> bool:
    """Trio keeps an idle thread cache of its own (its threads exit after 10 s idle);
    they belong to the event loop library, not to tasklanes or the test."""
    return thread.name.startswith("Trio thread")


def open_fds() -> set[int]:
    try:
        return {int(fd) for fd in os.listdir("/proc/self/fd")}
    except OSError:  # pragma: no cover
        return set()


def _settle(check: object, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and check():  # type: ignore[operator]
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    threads_before = set(threading.enumerate())
    children_before = child_pids()
    fds_before = open_fds()
    yield
    # The default scheduler lives as long as the process; close it after each test
    # so that what remains is what the test itself left behind.
    default = _scheduler._default
    if default is not None:
        default.close()
    _scheduler._default = None

    def leaked_threads() -> list[threading.Thread]:
        return [
            t
            for t in threading.enumerate()
            if t not in threads_before and t.is_alive() and not is_runtime_thread(t)
        ]

    def leaked_children() -> set[int]:
        shared = {forkserver_pid(), resource_tracker_pid()}
        return child_pids() - children_before - shared  # type: ignore[operator]

    _settle(lambda: leaked_threads() or leaked_children())
    threads = leaked_threads()
    children = leaked_children()
    assert not threads, f"test left threads running: {[t.name for t in threads]}"
    assert not children, f"test left child processes: {sorted(children)}"
    # fds: allow the forkserver's pipe (opened once per process) and nothing else.
    _settle(lambda: len(open_fds() - fds_before) > 2, 2.0)
    new_fds = open_fds() - fds_before
    assert len(new_fds) <= 2, f"test left file descriptors open: {sorted(new_fds)}"


@pytest.fixture
def scheduler() -> Iterator[tasklanes.Scheduler]:
    with tasklanes.Scheduler() as sched:
        yield sched
