"""Polite scraping: per-host limits, a rate per host, retries, a timeout per request.

Scraping sites you do not own: never more than 2 requests at once to one host and
never more than 10 a second (`Limiters(concurrency=2, rate=10)`, one budget per
host), never wait forever for one page (`timeout`, per attempt), retry what is
worth retrying (a 429 "Too Many Requests", a reset connection, a timeout) with
exponential backoff, and keep one bad page from losing the others
(`return_exceptions=True`).

Two local "sites": one answers 429 to the first request for some pages and 500 to
some others; the other resets the connection on the first request for some pages.

Run: python examples/05_polite_scraping.py
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import socket
import struct
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import anyio
import httpx
from _servers import Gauge, serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from tasklanes import Limiters, Retry, amap, get_scheduler

PAGES = 24
arrivals: dict[str, list[float]] = collections.defaultdict(list)  # host -> request times
in_flight: dict[str, Gauge] = collections.defaultdict(Gauge)  # host -> requests at once
tries: collections.Counter[str] = collections.Counter()  # path -> requests seen


# -- site 1 (uvicorn): 429 on a first try, 500 for good ---------------------------------


async def page(request: Request) -> Response:
    number = int(request.path_params["number"])
    host = request.headers["host"]
    arrivals[host].append(time.monotonic())
    tries[f"{host}/{number}"] += 1
    with in_flight[host]:
        await anyio.sleep(0.15)
        if number % 6 == 1 and tries[f"{host}/{number}"] == 1:
            return Response("slow down", status_code=429, headers={"Retry-After": "0"})
        if number % 12 == 7:
            return Response("internal error", status_code=500)
        return HTMLResponse(f"<h1>Page {number}</h1>")


site_1 = Starlette(routes=[Route("/page/{number:int}", page)])


# -- site 2 (raw sockets): resets the connection on a first try --------------------------


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    request = await reader.readuntil(b"\r\n\r\n")
    number = int(request.split()[1].rsplit(b"/", 1)[1])
    host = next(line.split(b":", 1)[1].strip().decode() for line in request.split(b"\r\n")
                if line.lower().startswith(b"host:"))
    arrivals[host].append(time.monotonic())
    tries[f"{host}/{number}"] += 1
    with in_flight[host]:
        await asyncio.sleep(0.15)
        if number % 4 == 2 and tries[f"{host}/{number}"] == 1:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()  # RST: "connection reset by peer"
            return
        body = f"<h1>Page {number}</h1>".encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
    writer.close()


@contextlib.contextmanager
def serve_raw() -> Iterator[str]:
    started = threading.Event()
    state: dict[str, object] = {}

    async def run() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        state["port"] = server.sockets[0].getsockname()[1]
        state["stop"] = asyncio.get_running_loop().create_future()
        started.set()
        async with server:
            await state["stop"]  # type: ignore[misc]

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield f"http://127.0.0.1:{state['port']}"
    finally:
        loop.call_soon_threadsafe(state["stop"].set_result, None)  # type: ignore[attr-defined]
        thread.join(10)
        loop.close()


# -- the scraper ---------------------------------------------------------------------------


class TooManyRequests(Exception):
    """The site answered 429: worth another try, later."""


async def fetch(client: httpx.AsyncClient, url: str) -> str:
    response = await client.get(url)
    if response.status_code == 429:
        raise TooManyRequests(url)
    response.raise_for_status()  # other 4xx/5xx: httpx.HTTPStatusError, not retried
    return response.text


per_host = Limiters(concurrency=2, rate=10)  # one budget per host, shared by every call
retry = Retry(attempts=3, on=(TooManyRequests, httpx.TransportError, TimeoutError),
              backoff=0.05, max_backoff=1.0)


async def main(site_1_url: str, site_2_url: str) -> None:
    urls = [f"{base}/page/{i}" for i in range(PAGES) for base in (site_1_url, site_2_url)]
    headers = {"User-Agent": "tasklanes-example/1.0 (polite; contact: you@example.com)"}
    start = time.perf_counter()
    async with httpx.AsyncClient(headers=headers) as client:
        pages = [
            page
            async for page in amap(
                functools.partial(fetch, client),
                urls,
                limiter=lambda url: per_host[urlsplit(url).netloc],
                retry=retry,
                timeout=2,  # per attempt
                return_exceptions=True,
            )
        ]
    took = time.perf_counter() - start

    ok = sum(isinstance(p, str) for p in pages)
    failures = collections.Counter(type(p).__name__ for p in pages if not isinstance(p, str))
    retried = get_scheduler().stats()["io"].retried
    print(f"{len(urls)} pages from 2 hosts in {took:.2f} s: {ok} pages, "
          f"failures {dict(failures)}, {retried} attempts retried")
    for host, times in arrivals.items():
        busiest = max(sum(1 for t in times if s <= t < s + 1.0) for s in times)
        print(f"  {host}: {len(times)} requests, at most {in_flight[host].peak} at once "
              f"(concurrency=2), at most {busiest} in any second (rate=10)")
        assert in_flight[host].peak <= 2
        assert busiest <= 12  # 10 a second plus the burst of 1, with network jitter to spare

    assert ok == 2 * PAGES - 2  # pages 7 and 19 of site 1 answer 500 for good
    assert failures == {"HTTPStatusError": 2}
    assert retried == 4 + 6  # site 1: pages 1, 7, 13, 19 got a 429; site 2: 6 resets


if __name__ == "__main__":
    with serve(site_1) as url_1, serve_raw() as url_2:
        anyio.run(main, url_1, url_2)
