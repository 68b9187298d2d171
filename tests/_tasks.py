"""Module-level task functions for the lane and API tests (cpu tasks must pickle by
reference, so they live in an importable module)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from tasklanes import check_cancelled, offload


class Gauge:
    """Counts tasks running at once, from any thread; remembers the peak."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.started = 0

    def __enter__(self) -> Gauge:
        with self._lock:
            self.now += 1
            self.started += 1
            self.peak = max(self.peak, self.now)
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.now -= 1


def double(x: int) -> int:
    return 2 * x


def fail_on_bad(x: str) -> str:
    if x == "bad":
        raise ValueError("bad")
    return x


def sleep_return(seconds: float, value: object) -> object:
    time.sleep(seconds)
    return value


def fail_with(exc_type: type[BaseException], message: str) -> None:
    raise exc_type(message)


def getpid_sleep(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def write_pid_and_spin(path: str) -> None:
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    while True:
        pass


def exit_hard(code: int) -> None:
    os._exit(code)


def exit_on(x: int, bad: int) -> int:
    if x == bad:
        os._exit(3)
    return x


def polite_sleeper(seconds: float, flag: list[str]) -> str:
    """Sleeps in small steps, checking whether tasklanes still wants the result."""
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            time.sleep(0.005)
            check_cancelled()
    except BaseException as exc:
        flag.append(type(exc).__name__)
        raise
    flag.append("finished")
    return "done"


class CustomError(Exception):
    pass


def raise_custom(message: str) -> None:
    raise CustomError(message)


def return_unpicklable() -> object:
    return threading.Lock()


@offload(kind="cpu")
def offloaded_square(x: int) -> int:
    return x * x


@offload(kind="cpu", timeout=0.5)
def offloaded_spin() -> None:
    while True:
        pass


def close_under_a_running_batch(
    sched: Any, tasks: list[Any], kind: str, seconds: float = 15.0
) -> tuple[BaseException, float]:
    """Run ``tasks`` with ``run_all_sync`` in a thread, close ``sched`` once one of them
    runs, and return what the call raised and how long ``close()`` took to let it go.
    ``seconds`` bounds each wait (for a task to start, for the call to return)."""
    caught: list[BaseException] = []

    def runner() -> None:
        try:
            sched.run_all_sync(tasks, kind=kind)
        except BaseException as exc:
            caught.append(exc)

    thread = threading.Thread(target=runner)
    thread.start()
    deadline = time.monotonic() + seconds
    while sched.stats()[kind].running < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sched.stats()[kind].running == 1
    started = time.monotonic()
    sched.close()
    thread.join(seconds)
    assert not thread.is_alive()
    assert len(caught) == 1, caught
    return caught[0], time.monotonic() - started


def nested_cpu_batch() -> tuple[float, str]:
    """A cpu task that starts a cpu batch of its own: how long until it heard back,
    and what it heard."""
    from tasklanes import call, run_all_sync

    start = time.monotonic()
    try:
        outcome = repr(run_all_sync([call(double, 1)], kind="cpu"))
    except RuntimeError as exc:
        outcome = f"RuntimeError: {exc}"
    return time.monotonic() - start, outcome


@offload(kind="cpu", limit=2)
def offloaded_limited_sleep(seconds: float) -> int:
    if seconds < 0:
        raise KeyError("fail fast")
    time.sleep(seconds)
    return 1


def count_primes(n: int) -> int:
    """Primes below ``n``, by trial division in pure Python: holds the GIL and computes
    (n = 300_000 takes about 0.3 s)."""
    found = 0
    for i in range(2, n):
        for j in range(2, int(i**0.5) + 1):
            if i % j == 0:
                break
        else:
            found += 1
    return found


def compute_politely(seconds: float) -> int:
    """Computes (pure Python, holding the GIL) for ``seconds``, checking now and then
    whether tasklanes still wants the result; returns how many rounds it did."""
    end = time.monotonic() + seconds
    rounds = 0
    while time.monotonic() < end:
        sum(i * i for i in range(2000))
        rounds += 1
        check_cancelled()
    return rounds


@offload(kind="auto")
def offloaded_auto_primes(n: int) -> int:
    return count_primes(n)


def sha256_hex(data: bytes) -> str:
    """hashlib releases the GIL while it hashes a big buffer: threads compute at once."""
    import hashlib

    return hashlib.sha256(data).hexdigest()


def pid_and_niceness(_: int) -> tuple[int, int]:
    """This worker's pid and scheduling niceness."""
    return os.getpid(), os.getpriority(os.PRIO_PROCESS, 0)
