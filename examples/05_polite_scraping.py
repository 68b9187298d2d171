"""Polite scraping: capped concurrency, a timeout per request, failures collected.

Scraping a site you do not own: never more than a few requests at once (``limit``),
never wait forever for one page (``timeout``, per task), and one bad page must not
lose the others (``return_exceptions=True``: a failed slot holds its exception).
The "site" is local: an index of 40 pages, some slow, some broken.

Run: python examples/05_polite_scraping.py
"""

from __future__ import annotations

import collections
import re
import time

import anyio
import httpx
from _servers import Gauge, serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from tasklanes import TaskTimeout, call, run_all

server_side = Gauge()  # requests the site is handling
client_side = Gauge()  # requests we have in flight


async def index(request: Request) -> HTMLResponse:
    links = "".join(f'<li><a href="/page/{i}">page {i}</a></li>' for i in range(40))
    return HTMLResponse(f"<ul>{links}<li><a href='/missing'>gone</a></li></ul>")


async def page(request: Request) -> Response:
    number = int(request.path_params["number"])
    with server_side:
        await anyio.sleep(1.0 if number % 10 == 3 else 0.02)  # some pages are slow
        if number % 10 == 7:
            return Response("internal error", status_code=500)
        return HTMLResponse(f"<h1>Page {number}</h1><p>{'word ' * number}</p>")


app = Starlette(routes=[Route("/", index), Route("/page/{number:int}", page)])


async def fetch(client: httpx.AsyncClient, url: str) -> str:
    with client_side:
        response = await client.get(url)
    response.raise_for_status()  # 4xx/5xx become httpx.HTTPStatusError
    return response.text


async def main(base_url: str) -> None:
    headers = {"User-Agent": "tasklanes-example/1.0 (polite; contact: you@example.com)"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers) as client:
        links = re.findall(r'href=["\'](/[^"\']*)["\']', await fetch(client, "/"))
        start = time.perf_counter()
        pages = await run_all(
            [call(fetch, client, link) for link in links],
            limit=5,  # at most 5 requests at once
            timeout=0.3,  # per request
            return_exceptions=True,  # keep going; failures are collected
        )
        took = time.perf_counter() - start

    ok = {link: text for link, text in zip(links, pages, strict=True) if isinstance(text, str)}
    failures = collections.Counter(
        type(p).__name__ for p in pages if isinstance(p, BaseException)
    )
    for link, outcome in zip(links, pages, strict=True):
        if isinstance(outcome, BaseException):
            print(f"  {link}: {type(outcome).__name__}: {outcome}".splitlines()[0])
    print(f"{len(links)} links in {took:.2f} s: {len(ok)} pages, failures {dict(failures)}")
    # A timed-out request is abandoned at once on our side (its slot frees up), but the
    # site may still be working on it: it sees a few more at once than we send.
    print(f"at most {client_side.peak} requests in flight (limit=5); "
          f"the site handled at most {server_side.peak} at once")

    assert len(ok) == 32
    assert sum(isinstance(p, TaskTimeout) for p in pages) == 4  # pages 3, 13, 23, 33
    assert sum(isinstance(p, httpx.HTTPStatusError) for p in pages) == 5  # 7, 17, ..., /missing
    assert client_side.peak <= 5


if __name__ == "__main__":
    with serve(app) as url:
        anyio.run(main, url)
