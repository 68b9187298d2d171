"""Production: explicit capacities, timeouts everywhere, and ``stats()`` exported.

A long-running service should:

* own a ``Scheduler`` with capacities chosen for its machine and its dependencies,
  and close it on shutdown;
* give every task a ``timeout`` (and every blocking call its own socket timeout);
* collect failures with ``return_exceptions=True`` where one bad item must not sink
  the batch, and log them;
* budget what it calls: a ``Limiter`` per dependency, shared by every batch that
  uses it (here the orders API: a rate; the database: a concurrency), and retry what
  fails transiently (``retry=Retry(...)``);
* export the lanes' figures: queue lag (``wait``), ``running``/``waiting``, errors
  and timeouts, here both logged every 0.2 s and served on a Prometheus ``/metrics``
  endpoint by the collector of ``tasklanes.metrics.prometheus`` (extra: prometheus).

Run: python examples/10_production.py
"""

from __future__ import annotations

import logging
import random
import time

import anyio
import httpx
from _servers import serve
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tasklanes import Limiter, Retry, Scheduler, TaskTimeout, call
from tasklanes.metrics import prometheus

log = logging.getLogger("service")
scheduler = Scheduler(io_limit=200, blocking_limit=16, cpu_limit=2)
# One budget per dependency, shared by every batch (and every thread) that uses it.
orders_api = Limiter(rate=2000, burst=50, name="orders-api")
database = Limiter(concurrency=4, name="orders-db")
transient = Retry(attempts=3, on=(ConnectionError,), backoff=0.01)


# -- exporting the figures ----------------------------------------------------------

# A collector reads scheduler.stats() at each scrape (safe from any thread or loop;
# here uvicorn's). Its own registry keeps this example's output to tasklanes' figures;
# a service would usually register on prometheus_client's default REGISTRY.
registry = CollectorRegistry()
prometheus.register(scheduler, registry)



async def metrics(request: Request) -> Response:
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


metrics_app = Starlette(routes=[Route("/metrics", metrics)])


async def log_stats_every(seconds: float) -> None:
    while True:
        await anyio.sleep(seconds)
        for kind, lane in scheduler.stats().items():
            if lane.completed or lane.running:
                log.info(
                    "%s: running=%d waiting=%d done=%d failed=%d timed_out=%d lag_max=%.1fms",
                    kind, lane.running, lane.waiting, lane.completed, lane.failed,
                    lane.timed_out, lane.wait.max * 1000,
                )


# -- the work -----------------------------------------------------------------------


async def fetch_order(order_id: int) -> dict[str, int]:
    await anyio.sleep(random.uniform(0.01, 0.05) if order_id % 25 else 5)  # one in 25 hangs
    return {"id": order_id, "amount": order_id * 3}


refused_once: set[int] = set()


def store(order: dict[str, int]) -> int:
    time.sleep(0.01)  # a sync database driver
    if order["id"] % 40 == 39 and order["id"] not in refused_once:
        refused_once.add(order["id"])  # a transient failure: the retry succeeds
        raise ConnectionError(f"database refused order {order['id']}")
    return order["id"]


def score(amount: int) -> int:
    return sum(i * i % 13 for i in range(amount * 100))  # CPU work


async def process(order_ids: list[int]) -> None:
    fetched = await scheduler.run_all(
        [call(fetch_order, i) for i in order_ids], kind="io", limit=50, timeout=0.5,
        return_exceptions=True, limiter=orders_api,
    )
    orders = [o for o in fetched if isinstance(o, dict)]
    stored = await scheduler.run_all(
        [call(store, o) for o in orders], kind="blocking", limit=8, timeout=2,
        return_exceptions=True, limiter=database, retry=transient,
    )
    scores = await scheduler.run_all(
        [call(score, o["amount"]) for o in orders], kind="cpu", timeout=5,
    )
    for outcome in [*fetched, *stored]:
        if isinstance(outcome, BaseException):
            level = logging.WARNING if isinstance(outcome, TaskTimeout) else logging.ERROR
            log.log(level, "%s: %s", type(outcome).__name__, outcome)
    log.info("batch of %d: %d stored, %d scored", len(order_ids),
             sum(isinstance(s, int) for s in stored), len(scores))


async def main(metrics_url: str) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(log_stats_every, 0.2)
        for batch in range(3):  # a real service would loop on its queue
            await process(list(range(batch * 50, batch * 50 + 50)))
        async with httpx.AsyncClient() as client:
            text = (await client.get(metrics_url)).text
        tg.cancel_scope.cancel()  # stop the exporter

    print("GET /metrics:")
    shown = [line for line in text.splitlines() if 'lane="io"' in line and "_bucket" not in line]
    print("".join(f"  {line}\n" for line in shown), end="")
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert values['tasklanes_tasks_completed_total{lane="io"}'] == 144
    assert values['tasklanes_tasks_timed_out_total{lane="io"}'] == 6
    assert values['tasklanes_tasks_failed_total{lane="blocking"}'] == 3  # attempts that failed
    assert values['tasklanes_tasks_retried_total{lane="blocking"}'] == 3  # ...and ran again
    assert values['tasklanes_tasks_completed_total{lane="blocking"}'] == 144  # none lost
    assert values['tasklanes_tasks_completed_total{lane="cpu"}'] == 144


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    random.seed(1)
    with scheduler, serve(metrics_app) as url:
        anyio.run(main, f"{url}/metrics")
