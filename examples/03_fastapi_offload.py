"""A FastAPI app whose routes offload blocking and CPU work with ``@offload``.

An ``async def`` route runs on the server's event loop: a blocking call or a long
computation inside it would freeze every other request. ``@offload`` turns the sync
function into an awaitable one that runs on a lane: blocking calls on the worker
threads, CPU work on the worker processes (the GIL lets only one thread compute at
a time). The event loop stays free, as the ``/health`` timings below show.

Run: python examples/03_fastapi_offload.py   (starts the app under uvicorn, calls it,
prints what it measured and stops; ``uvicorn 03_fastapi_offload:app`` would serve it.)
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx
from _servers import serve
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from tasklanes import Scheduler, TaskTimeout, call, offload, run_all

# The app's own scheduler: its capacities, and closed with the app. Its worker processes
# run at a lower priority (cpu_worker_nice): when they fill every core, the server's
# event loop still gets one as soon as a request comes in.
scheduler = Scheduler(blocking_limit=16, cpu_limit=2, cpu_worker_nice=10)


@offload(limit=4, timeout=5, scheduler=scheduler)  # kind="blocking"; a pool of 4 connections
def legacy_lookup(key: str) -> dict[str, str]:
    """A sync driver or SDK call: it waits, holding its thread."""
    time.sleep(0.1)
    return {"key": key, "value": key.upper()}


@offload(kind="cpu", timeout=1, scheduler=scheduler)
def count_primes(n: int) -> int:
    """Pure-Python computing: holds the GIL the whole time."""
    return sum(all(i % d for d in range(2, int(i**0.5) + 1)) for i in range(2, n))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await scheduler.aclose()  # stop the app's threads and worker processes


app = FastAPI(lifespan=lifespan)


@app.exception_handler(TaskTimeout)
async def on_timeout(request: object, exc: TaskTimeout) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=504)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/lookup/{key}")
async def lookup(key: str) -> dict[str, str]:
    return await legacy_lookup(key)


@app.get("/primes/{n}")
async def primes(n: int) -> dict[str, int]:
    return {"n": n, "primes": await count_primes(n)}


# -- a client that exercises the app ------------------------------------------------


async def timed_get(client: httpx.AsyncClient, path: str) -> tuple[float, httpx.Response]:
    start = time.perf_counter()
    response = await client.get(path)
    return time.perf_counter() - start, response


async def main(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        await client.get("/primes/10")  # start the worker processes once

        # 8 lookups of 0.1 s, at most 4 at once (the decorator's limit): about 0.2 s.
        start = time.perf_counter()
        lookups = await run_all([call(client.get, f"/lookup/k{i}") for i in range(8)])
        took = time.perf_counter() - start
        assert [r.json()["value"] for r in lookups] == [f"K{i}" for i in range(8)]
        assert took >= 0.19, took
        print(f"8 blocking lookups, limit=4: {took:.2f} s")

        # CPU work in two routes while /health is polled: the loop never freezes.
        async with anyio.create_task_group() as tg:
            cpu: list[httpx.Response] = []

            async def heavy() -> None:
                cpu.append(await client.get("/primes/60000"))

            tg.start_soon(heavy)
            tg.start_soon(heavy)
            await anyio.sleep(0.05)
            probes = [await timed_get(client, "/health") for _ in range(5)]
        worst = max(seconds for seconds, _ in probes)
        assert all(r.json()["primes"] == 6057 for r in cpu)
        assert worst < 0.5, worst
        print(f"2 CPU-heavy requests; /health answered meanwhile in at most {worst * 1000:.0f} ms")

        # A computation that overruns its timeout: its process is killed, 504.
        seconds, response = await timed_get(client, "/primes/10000000")
        assert response.status_code == 504, response.status_code
        print(f"an overrunning computation: {response.status_code} after {seconds:.1f} s")


if __name__ == "__main__":
    with serve(app) as url:
        anyio.run(main, url)
