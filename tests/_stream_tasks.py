"""Module-level task functions for tests/test_processes_stream.py: big results, and
tasks that write (part of) a frame into their worker's result pipe themselves, to
stand for a worker that dies or stalls in the middle of sending a big result, or
that sends a corrupt one."""

from __future__ import annotations

import os
import pickle
import random
import sys
import time
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any

from tasklanes._processes._protocol import FRAME_HEADER, TAG_OK


def randbytes(n: int, seed: int) -> bytes:
    """`n` bytes that only this `seed` gives: a result whose every byte is checked."""
    return random.Random(seed).randbytes(n)


def big_after(seconds: float, n: int, seed: int) -> bytes:
    time.sleep(seconds)
    return randbytes(n, seed)


class BigError(Exception):
    """An exception that carries a lot of data back."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.data = data


def raise_big(n: int, seed: int) -> None:
    raise BigError(randbytes(n, seed))


def _refuse(*args: object) -> None:
    raise ValueError("this result cannot be rebuilt here")


class _FailsAfterData:
    """Unpickles its big data, then fails (the REDUCE comes after the data)."""

    def __init__(self, n: int) -> None:
        self.data = b"d" * n

    def __reduce__(self) -> tuple[Any, ...]:
        return (_refuse, (self.data,))


class _FailsFirst:
    def __reduce__(self) -> tuple[Any, ...]:
        return (_refuse, ())


def big_failing_after_data(n: int) -> object:
    return _FailsAfterData(n)


def big_failing_before_data(n: int) -> object:
    """A pickle that fails in the parent before its big data is read: the rest of
    the frame must be skipped."""
    return (_FailsFirst(), b"d" * n)


def _result_fd() -> int:
    """This worker's result pipe: the write-only connection of the worker's loop."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        for value in list(frame.f_locals.values()):
            if isinstance(value, Connection) and value.writable and not value.readable:
                return value.fileno()
        frame = frame.f_back
    raise RuntimeError("not running in a pool worker")


def _tell(path: str | None, pid: int) -> None:
    if path is not None:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(pid))
        os.replace(tmp, path)


def send_part_of_big_frame(
    n: int, then: str, path: str | None = None, holder_path: str | None = None
) -> None:
    """Write the header and the first half of a frame carrying an `n`-byte result,
    then `then`: "exit" (die mid-frame, exit code 3) or "sleep" (stall mid-frame for
    30 s). The pid goes to `path` once the half is written (so: being read).
    `holder_path`: first fork a grandchild that holds the pipe open (and sleeps),
    its pid written there."""
    if holder_path is not None:
        child = os.fork()
        if child == 0:
            _tell(holder_path, os.getpid())
            time.sleep(60)
            os._exit(0)
        while not os.path.exists(holder_path):
            time.sleep(0.01)
    fd = _result_fd()
    payload = bytes([TAG_OK]) + pickle.dumps(b"x" * n, pickle.HIGHEST_PROTOCOL)
    half = memoryview(FRAME_HEADER.pack(len(payload)) + payload)[: 4 + len(payload) // 2]
    while half:
        half = half[os.write(fd, half) :]
    _tell(path, os.getpid())
    if then == "exit":
        os._exit(3)
    time.sleep(30)


def send_raw_frame_then_exit(payload: bytes) -> None:
    """Send `payload` as a whole frame in place of our outcome, then exit: a worker
    that sends a corrupt (or malicious) big message."""
    fd = _result_fd()
    data = memoryview(FRAME_HEADER.pack(len(payload)) + payload)
    while data:
        data = data[os.write(fd, data) :]
    os._exit(0)
