"""What kind="auto" picks for the seeds' workloads, and what it costs against the best
hand-picked kind (the figures in docs/which-kind.md).

    python benchmarks/bench_auto.py [--rounds 5]

Workloads: HTTP calls (httpx.AsyncClient against a local uvicorn server whose handler
awaits 20 ms), a sync driver (urllib against the same server), hashing (sha256 of
8 MB buffers: hashlib releases the GIL) and prime counting (pure Python). Each round
times every hand-picked kind that can run the workload, "auto" on a fresh Scheduler
(it measures first) and "auto" again on that Scheduler (its decision is kept), each
on its own Scheduler, in alternation; the table gives the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import socket
import statistics
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import tasklanes
from tasklanes import Scheduler, call

HTTP_TASKS = 100
SYNC_TASKS = 100
HASH_TASKS = 32
PRIME_TASKS = 12
BUFFER = b"x" * (8 << 20)


def count_primes(n: int) -> int:
    found = 0
    for i in range(2, n):
        for j in range(2, int(i**0.5) + 1):
            if i % j == 0:
                break
        else:
            found += 1
    return found


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch_sync(url: str) -> int:
    with urllib.request.urlopen(url) as response:
        return len(response.read())


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await asyncio.sleep(0.02)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def serve() -> tuple[str, Callable[[], None]]:
    """The HTTP server in its own process, so that it does not share this one's GIL."""
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bench_auto:app", "--port", str(port),
         "--log-level", "error", "--backlog", "2048"],
        cwd=Path(__file__).parent,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    for _ in range(500):
        try:
            urllib.request.urlopen(url).read()
            break
        except OSError:
            time.sleep(0.02)

    def stop() -> None:
        server.terminate()
        server.wait()

    return url, stop


async def run_http(kind: str, sched: Scheduler, client: Any, url: str) -> None:
    await sched.run_all([call(client.get, url) for _ in range(HTTP_TASKS)], kind=kind)


def workloads(
    url: str, client: Any
) -> dict[str, tuple[list[str], Callable[[str, Scheduler], Any]]]:
    return {
        "HTTP calls (httpx.AsyncClient)": (["io"], lambda k, s: run_http(k, s, client, url)),
        "sync HTTP driver (urllib)": (
            ["blocking", "cpu"],
            lambda k, s: s.run_all([call(fetch_sync, url) for _ in range(SYNC_TASKS)], kind=k),
        ),
        "hashing (sha256, 8 MB each)": (
            ["blocking", "cpu"],
            lambda k, s: s.run_all([call(sha256, BUFFER) for _ in range(HASH_TASKS)], kind=k),
        ),
        "prime counting (pure Python)": (
            ["blocking", "cpu"],
            lambda k, s: s.run_all(
                [call(count_primes, 150_000) for _ in range(PRIME_TASKS)], kind=k
            ),
        ),
    }


class Decisions(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.seen[record.function] = record.getMessage()  # type: ignore[attr-defined]


async def main(rounds: int) -> None:
    url, stop = serve()
    decisions = Decisions()
    log = logging.getLogger("tasklanes.auto")
    log.setLevel(logging.INFO)
    log.addHandler(decisions)
    rows = []
    import httpx

    # One client for every run: its connections are made once, in the warm-up round.
    client = httpx.AsyncClient(limits=httpx.Limits(max_connections=50))
    try:
        for name, (kinds, run) in workloads(url, client).items():
            times: dict[str, list[float]] = {k: [] for k in [*kinds, "auto", "auto (kept)"]}
            picked = ""
            for r in range(rounds + 1):  # the first round warms up, untimed
                for kind in kinds:
                    with Scheduler() as sched:
                        await run(kind, sched)  # warm the lane: threads, processes
                        t0 = time.perf_counter()
                        await run(kind, sched)
                        if r:
                            times[kind].append(time.perf_counter() - t0)
                with Scheduler() as sched:
                    # Warm the pools as above, without teaching auto anything.
                    await sched.run_all([call(abs, -1)] * 64, kind="blocking")
                    await sched.run_all([call(abs, -1)] * 64, kind="cpu")
                    t0 = time.perf_counter()
                    await run("auto", sched)
                    first = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    await run("auto", sched)
                    kept = time.perf_counter() - t0
                    stats = sched.stats()
                    picked = ", ".join(
                        f"{d.kind} ({d.cpu_share:.0%} CPU)" if d.cpu_share is not None else d.kind
                        for lane in ("io", "blocking", "cpu")
                        for d in stats[lane].auto
                    )
                if r:
                    times["auto"].append(first)
                    times["auto (kept)"].append(kept)
            medians = {k: statistics.median(v) for k, v in times.items()}
            best = min(kinds, key=lambda k: medians[k])
            rows.append((name, picked, medians, best))
            print(name, picked, {k: round(v, 3) for k, v in medians.items()}, flush=True)
    finally:
        await client.aclose()
        stop()
        log.removeHandler(decisions)
    print()
    print("| workload | auto picked | best hand-picked | auto, first batch | auto, next batch |")
    print("|---|---|---|---|---|")
    for name, picked, medians, best in rows:
        others = ", ".join(
            f'`"{k}"` {medians[k]:.2f} s' for k in medians if k not in ("auto", "auto (kept)")
        )
        print(
            f"| {name} | {picked} | {others} (best: `\"{best}\"`) | "
            f"{medians['auto']:.2f} s | {medians['auto (kept)']:.2f} s |"
        )
    print()
    for line in decisions.seen.values():
        print(line)


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore", tasklanes.KindWarning)  # the hand-picked "blocking" runs
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"tasklanes {tasklanes.__version__}", flush=True)
    asyncio.run(main(args.rounds))
