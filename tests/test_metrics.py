"""Exporters: a Prometheus collector scraped over HTTP from a real uvicorn app, and
OpenTelemetry instruments read through the SDK."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import tasklanes
from tasklanes import call, run_all
from tasklanes._stats import BUCKETS, record
from tasklanes.metrics import HISTOGRAM_BOUNDS, otel, prometheus
from tasklanes.metrics._figures import cumulative_counts

from ._tasks import double


@contextmanager
def serve(app: Any) -> Iterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def metrics_app(registry: CollectorRegistry) -> Starlette:
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    return Starlette(routes=[Route("/metrics", metrics)])


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


async def fails(x: int) -> int:
    await anyio.sleep(0.005)  # uvloop may wake up to 1 ms early (millisecond timers)
    if x % 4 == 3:
        raise ValueError(x)
    return x


@pytest.mark.anyio
async def test_prometheus_scrape_over_http(scheduler: tasklanes.Scheduler) -> None:
    registry = CollectorRegistry()
    collector = prometheus.register(scheduler, registry)
    await run_all([fails(k) for k in range(20)], scheduler=scheduler, return_exceptions=True)
    await run_all([call(double, k) for k in range(5)], kind="blocking", scheduler=scheduler)
    with serve(metrics_app(registry)) as url:
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{url}/metrics")
    assert response.status_code == 200
    found = samples(response.text)
    assert value(found, "tasklanes_tasks_completed_total", lane="io") == 15
    assert value(found, "tasklanes_tasks_failed_total", lane="io") == 5
    assert value(found, "tasklanes_error_ratio", lane="io") == pytest.approx(0.25)
    assert value(found, "tasklanes_tasks_completed_total", lane="blocking") == 5
    assert value(found, "tasklanes_tasks_completed_total", lane="cpu") == 0
    assert value(found, "tasklanes_lane_capacity", lane="blocking") == scheduler.capacity(
        "blocking"
    )
    assert value(found, "tasklanes_threads_alive", lane="blocking") >= 1
    assert value(found, "tasklanes_tasks_running", lane="io") == 0
    # The run-time histogram: cumulative buckets ending in +Inf == count.
    run = "tasklanes_task_run_seconds"
    assert value(found, f"{run}_count", lane="io") == 20
    assert value(found, f"{run}_bucket", lane="io", le="+Inf") == 20
    counts = [value(found, f"{run}_bucket", lane="io", le=repr(b)) for b in HISTOGRAM_BOUNDS]
    assert counts == sorted(counts)
    assert counts[-1] == 20  # every run took well under 300 s
    assert counts[0] == 0  # and none under 0.1 ms: each slept about 5 ms
    assert value(found, f"{run}_sum", lane="io") >= 20 * 0.003
    registry.unregister(collector)
    assert "tasklanes" not in generate_latest(registry).decode()


def test_register_defaults_to_the_process_scheduler_and_registry() -> None:
    from prometheus_client import REGISTRY

    collector = prometheus.register()
    try:
        tasklanes.run_all_sync([call(double, 1)], kind="blocking")
        found = samples(generate_latest(REGISTRY).decode())
        assert value(found, "tasklanes_tasks_completed_total", lane="blocking") == 1
        with pytest.raises(ValueError, match="Duplicated"):
            prometheus.register()  # the same names twice in one registry
    finally:
        REGISTRY.unregister(collector)


def test_otel_instruments_read_the_scheduler(scheduler: tasklanes.Scheduler) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        made = otel.instrument(scheduler, provider)
        assert len(made.instruments) > 10
        scheduler.run_all_sync([call(double, k) for k in range(7)], kind="blocking")
        data = reader.get_metrics_data()
        points: dict[str, list[Any]] = {}
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                assert sm.scope.name == "tasklanes"
                for metric in sm.metrics:
                    points[metric.name] = list(metric.data.data_points)
        completed = {p.attributes["lane"]: p.value for p in points["tasklanes_tasks_completed"]}
        assert completed == {"io": 0, "blocking": 7, "cpu": 0}
        run = {
            (p.attributes["lane"], p.attributes["quantile"]): p.value
            for p in points["tasklanes_task_run_seconds"]
        }
        assert 0 <= run[("blocking", "0.5")] <= run[("blocking", "max")]
        assert "tasklanes_tasks_running" in points
    finally:
        provider.shutdown()


def test_a_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    with pytest.raises(ImportError, match=r"tasklanes\[prometheus\]"):
        prometheus.register(registry=object())
    monkeypatch.setitem(sys.modules, "opentelemetry.metrics", None)
    with pytest.raises(ImportError, match=r"tasklanes\[otel\]"):
        otel.instrument()


def test_a_wrong_scheduler_is_refused() -> None:
    with pytest.raises(TypeError, match="Scheduler"):
        prometheus.register("default", CollectorRegistry())  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=1e4, allow_nan=False), max_size=200))
def test_exported_buckets_count_durations_under_each_bound(values: list[float]) -> None:
    hist: dict[int, int] = {}
    for v in values:
        record(hist, v)
    fine = [0] * BUCKETS
    for k, c in hist.items():
        fine[min(k, BUCKETS - 1)] += c
    got = cumulative_counts(fine)
    for bound, count in zip(HISTOGRAM_BOUNDS, got, strict=True):
        # A fine bucket straddling a bound is counted whole on one side: 2% either way.
        low = sum(v <= bound / 1.05 for v in values)
        high = sum(v <= bound * 1.05 for v in values)
        assert low <= count <= high
