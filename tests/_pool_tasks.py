"""Module-level task functions for tests/test_processes_pool.py (they must pickle by
reference, so they live in an importable module, not in the test file)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any


def inc(x: int) -> int:
    return x + 1


def identity(x: object) -> object:
    return x


def sleep_then(seconds: float, value: object = None) -> object:
    time.sleep(seconds)
    return value


def spin(seconds: float) -> float:
    """Pure-Python busy work for about ``seconds``."""
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return seconds


def burn(n: int) -> int:
    """A fixed amount of pure-Python work."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def getpid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def exit_now(code: int = 1) -> None:
    os._exit(code)


def exit_if(x: int, bad: int) -> int:
    if x == bad:
        os._exit(1)
    return x


def exit_if_negative(x: int) -> int:
    """One argument (its chunks travel bare): exits the worker on a negative `x`."""
    if x < 0:
        os._exit(1)
    return x


def stall_if_negative(x: int) -> int:
    """One argument: sleeps 30 s on a negative `x` (a task to time out)."""
    if x < 0:
        time.sleep(30)
    return x


def mixed_forms(x: int) -> object:
    """One argument (bare chunks): mostly ints, now and then a str, a float, an int
    past 64 bits, or an error -- each breaks a worker's run of held ints."""
    if x % 101 == 7:
        raise ValueError(x)
    if x % 97 == 3:
        return str(x)
    if x % 89 == 5:
        return x + 0.5
    if x % 83 == 2:
        return x + 2**70
    return x


def exit_if_as(x: int, bad: int, form: str) -> object:
    """`exit_if`, returning `x` as an int, a float, a str or a list: each travels (and
    is journaled) in its own form."""
    if x == bad:
        os._exit(1)
    if form == "bigint":  # past 64 bits now and then: those travel pickled
        return x + 2**70 if x % 7 == 0 else x
    return {"int": x, "float": x + 0.5, "str": str(x), "list": [x]}[form]


def segfault() -> None:
    import ctypes

    ctypes.string_at(0)


class CustomError(Exception):
    pass


def raise_custom(msg: str) -> None:
    raise CustomError(msg)


class NeedsTwoArgs(Exception):
    """Pickles, but cannot be rebuilt: __init__ wants two arguments."""

    def __init__(self, a: object, b: object) -> None:
        super().__init__(f"{a}/{b}")


def raise_needs_two() -> None:
    raise NeedsTwoArgs(1, 2)


class Unpicklable(Exception):
    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("nope")


def raise_unpicklable() -> None:
    raise Unpicklable("bad")


def return_lock() -> object:
    return threading.Lock()


class _BadOnLoad:
    def __reduce__(self) -> tuple[Any, ...]:
        return (_fail_on_load, ())


def _fail_on_load() -> None:
    raise RuntimeError("cannot rebuild this")


def return_bad_on_load() -> object:
    return _BadOnLoad()


def fork_in_task() -> int:
    pid = os.fork()
    if pid == 0:
        # The child returns into the worker loop on purpose: the worker must cope.
        return -1
    os.waitpid(pid, 0)
    return 1


def system_exit() -> None:
    raise SystemExit(3)


def write_pid_then_sleep(path: str, seconds: float) -> int:
    """Tell the test which process runs us (so it can kill it), then sleep."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.replace(tmp, path)
    time.sleep(seconds)
    return os.getpid()


def timed_sleep(seconds: float) -> tuple[float, float, int]:
    """Sleep; report (start, end, pid), times on the monotonic clock shared by all
    processes of the machine."""
    start = time.monotonic()
    time.sleep(seconds)
    return (start, time.monotonic(), os.getpid())


_HOARD: list[bytes] = []


def hog(megabytes: int) -> int:
    """Keep `megabytes` of memory for the rest of the process's life; the pid."""
    _HOARD.append(b"x" * (megabytes << 20))
    return os.getpid()
