"""Many HTTP API calls with an async client (httpx), at most 20 at a time.

An async HTTP client waits without a thread per request: this is the ``"io"`` kind.
``limit=20`` is the politeness (or rate) knob: the server never sees more than 20 of
our requests at once, however many we queue. The API here is a local Starlette app
under uvicorn that takes 50 ms per request and counts the requests in flight.

Run: python examples/01_http_httpx.py
"""

from __future__ import annotations

import time

import anyio
import httpx
from _servers import Gauge, serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tasklanes import call, run_all

gauge = Gauge()


async def get_user(request: Request) -> JSONResponse:
    with gauge:
        await anyio.sleep(0.05)  # the API's own latency
        user_id = int(request.path_params["user_id"])
        return JSONResponse({"id": user_id, "name": f"user-{user_id}"})


app = Starlette(routes=[Route("/users/{user_id:int}", get_user)])


async def fetch_user(client: httpx.AsyncClient, user_id: int) -> dict[str, object]:
    response = await client.get(f"/users/{user_id}")
    response.raise_for_status()
    data: dict[str, object] = response.json()
    return data


async def main(base_url: str) -> None:
    n = 200
    # One client: its connection pool is reused by every request.
    limits = httpx.Limits(max_connections=20)
    async with httpx.AsyncClient(base_url=base_url, limits=limits) as client:
        start = time.perf_counter()
        users = await run_all(
            [call(fetch_user, client, i) for i in range(n)], limit=20, timeout=10
        )
        elapsed = time.perf_counter() - start

    assert [u["id"] for u in users] == list(range(n))  # results in input order
    assert gauge.peak <= 20, gauge.peak
    print(f"{n} requests of 50 ms in {elapsed:.2f} s (one after another: {n * 0.05:.0f} s)")
    print(f"at most {gauge.peak} requests in flight (limit=20)")


if __name__ == "__main__":
    with serve(app) as url:
        anyio.run(main, url)
