"""The Starlette app of the web-server benchmark (``benchmarks/run.py``, case ``web``).

``/ping`` is the trivial endpoint whose latency is measured; ``/inline``, ``/thread`` and
``/offload`` each run the same CPU-heavy function (``BENCH_BURN_N`` iterations of
:func:`bench_tasks.burn`) inline in the async route, through ``asyncio.to_thread``, and
through ``@offload(kind="cpu")`` (tasklanes' process pool).

Run by ``run.py`` as ``python -m uvicorn bench_webapp:app --host 127.0.0.1 --port P``.
"""

from __future__ import annotations

import asyncio
import os

from bench_tasks import burn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tasklanes import Scheduler, offload

BURN_N = int(os.environ.get("BENCH_BURN_N", "300000"))


@offload(kind="cpu")
def burn_offloaded(n: int) -> int:
    return burn(n)


#: A pool whose workers run at a lower priority (``cpu_worker_nice``, 10 or
#: ``BENCH_NICE``): they yield the cores to the server's event loop (``/offload_nice``).
_NICE = Scheduler(cpu_worker_nice=int(os.environ.get("BENCH_NICE", "10")))


@offload(kind="cpu", scheduler=_NICE)
def burn_offloaded_niced(n: int) -> int:
    """The same work on workers at a lower priority."""
    return burn(n)


#: A pool that leaves one core to the server's event loop (``/offload_spare``).
_SPARE = Scheduler(cpu_limit=max(1, (os.cpu_count() or 2) - 1))


@offload(kind="cpu", scheduler=_SPARE)
def burn_offloaded_spare(n: int) -> int:
    """The same work on a pool of one worker fewer than the cores."""
    return burn(n)


async def ping(request: Request) -> PlainTextResponse:
    return PlainTextResponse("pong")


async def inline(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(burn(BURN_N)))


async def thread(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(await asyncio.to_thread(burn, BURN_N)))


async def offloaded(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(await burn_offloaded(BURN_N)))


async def offloaded_niced(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(await burn_offloaded_niced(BURN_N)))


async def offloaded_spare(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(await burn_offloaded_spare(BURN_N)))


app = Starlette(
    routes=[
        Route("/ping", ping),
        Route("/inline", inline),
        Route("/thread", thread),
        Route("/offload", offloaded),
        Route("/offload_nice", offloaded_niced),
        Route("/offload_spare", offloaded_spare),
    ]
)
