"""Issue 14, big results: the parent's copies of one large cpu result, and what each
way of reading it costs (peak RSS above the RSS before the read, and time).

    python benchmarks/proto_big_result.py [--mb 200] [--rounds 3]

A child process sends ``pickle.dumps(b"x" * size)`` through a pipe, framed like the
pool's messages (a length, then the payload). The parent reads it three ways:

* ``today``: the pool's path -- reads of up to 1 MiB appended to a ``bytearray``,
  then ``bytes(buffer)`` (a copy) while the ``bytearray`` is still referenced, then
  ``pickle.loads`` (a copy into the result);
* ``exact buffer``: a ``bytearray`` of the frame's size filled with ``readinto``,
  then ``pickle.loads(memoryview)``: the buffer and the result;
* ``streamed``: ``pickle.load`` on a file object over the pipe: the unpickler
  allocates the result and reads the bytes straight into it (one copy, no buffer).

Each way runs in a fresh child (``fork``) so the peaks do not mix. Standalone: no
tasklanes code.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import pickle
import statistics
import struct
import time
from typing import Any

FRAME = struct.Struct("!i")


def vm(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux >= 4.0: VmHWM := VmRSS
    except OSError:
        pass


def sender(fd: int, size: int) -> None:
    data = pickle.dumps(b"x" * size, pickle.HIGHEST_PROTOCOL)
    view = memoryview(FRAME.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]
    os.close(fd)


def read_exact(fd: int, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = os.read(fd, n - len(out))
        if not chunk:
            raise EOFError
        out += chunk
    return bytes(out)


def today(fd: int) -> Any:
    rbuf = bytearray()
    need = None
    while need is None or len(rbuf) < need:
        data = os.read(fd, 1 << 20)
        if not data:
            raise EOFError
        rbuf += data
        if need is None and len(rbuf) >= 4:
            need = 4 + FRAME.unpack_from(rbuf)[0]
    data = bytes(rbuf)  # as _parse does; rbuf is still referenced below
    return pickle.loads(memoryview(data)[4:need])


def exact_buffer(fd: int) -> Any:
    (size,) = FRAME.unpack(read_exact(fd, 4))
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = os.readv(fd, [view[got:]])
        if not n:
            raise EOFError
        got += n
    return pickle.loads(view)


def streamed(fd: int) -> Any:
    read_exact(fd, 4)  # the frame's length: the pickle says where it ends
    # A buffered reader: its read(n) and readinto() loop until full (a raw pipe read
    # returns at most what the pipe holds); large bytes objects bypass its buffer.
    with open(fd, "rb", buffering=1 << 16, closefd=False) as stream:
        return pickle.load(stream)


WAYS = {"today": today, "exact buffer": exact_buffer, "streamed": streamed}


def one(way: str, size: int, out: Any) -> None:
    r, w = os.pipe()
    p = mp.get_context("fork").Process(target=sender, args=(w, size))
    p.start()
    os.close(w)
    reset_peak()
    base = vm("VmRSS")
    t0 = time.perf_counter()
    value = WAYS[way](r)
    elapsed = time.perf_counter() - t0
    assert len(value) == size
    out.send({"seconds": elapsed, "peak_over_size": (vm("VmHWM") - base) / (size / 2**20)})
    p.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size = args.mb << 20
    ctx = mp.get_context("fork")
    rows: dict[str, list[dict[str, float]]] = {w: [] for w in WAYS}
    for _ in range(args.rounds):
        for way in WAYS:
            a, b = ctx.Pipe()
            p = ctx.Process(target=one, args=(way, size, b))
            p.start()
            rows[way].append(a.recv())
            p.join()
    print(f"one {args.mb} MB bytes result through a pipe, medians of {args.rounds}:")
    for way, rs in rows.items():
        s = statistics.median(r["seconds"] for r in rs)
        x = statistics.median(r["peak_over_size"] for r in rs)
        print(f"  {way:<14} {s:7.3f} s   parent peak RSS growth {x:4.2f} x the result")
    print(json.dumps({w: rs for w, rs in rows.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
