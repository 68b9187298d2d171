"""The same API calls with a blocking client (urllib), on the ``"blocking"`` lane.

A sync client (urllib, requests, an SDK built on them) holds its thread while it
waits, so it cannot run on the event loop: each call runs on one of the shared
worker threads. The code is the same as with an async client, with
``kind="blocking"``; ``limit=10`` caps the requests in flight, and ``timeout``
bounds each call (the socket timeout stops the thread itself: a thread cannot be
killed, so give blocking calls their own timeouts too).

Run: python examples/02_http_blocking.py
"""

from __future__ import annotations

import json
import time
import urllib.request

import anyio
from _servers import Gauge, serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tasklanes import call, run_all, run_all_sync

gauge = Gauge()


async def get_user(request: Request) -> JSONResponse:
    with gauge:
        await anyio.sleep(0.05)
        user_id = int(request.path_params["user_id"])
        return JSONResponse({"id": user_id, "name": f"user-{user_id}"})


app = Starlette(routes=[Route("/users/{user_id:int}", get_user)])


def fetch_user(base_url: str, user_id: int) -> dict[str, object]:
    """Plain blocking code: it knows nothing about tasklanes."""
    with urllib.request.urlopen(f"{base_url}/users/{user_id}", timeout=5) as response:
        data: dict[str, object] = json.load(response)
        return data


async def from_async_code(base_url: str) -> list[dict[str, object]]:
    return await run_all(
        [call(fetch_user, base_url, i) for i in range(100)], kind="blocking", limit=10, timeout=10
    )


def main(base_url: str) -> None:
    n = 100
    start = time.perf_counter()
    # From a plain script: run_all_sync runs its own event loop.
    users = run_all_sync(
        [call(fetch_user, base_url, i) for i in range(n)], kind="blocking", limit=10, timeout=10
    )
    elapsed = time.perf_counter() - start
    assert [u["id"] for u in users] == list(range(n))
    assert gauge.peak <= 10, gauge.peak
    print(f"run_all_sync: {n} blocking requests of 50 ms in {elapsed:.2f} s "
          f"(one after another: {n * 0.05:.0f} s), at most {gauge.peak} in flight")

    # From async code: the same call, awaited.
    users = anyio.run(from_async_code, base_url)
    assert len(users) == n
    print(f"run_all: {len(users)} more, at most {gauge.peak} in flight (limit=10)")


if __name__ == "__main__":
    with serve(app) as url:
        main(url)
