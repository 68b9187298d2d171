"""The scheduler's figures as a `prometheus_client` collector (extra: `prometheus`).

```python
from prometheus_client import start_http_server
from tasklanes.metrics import prometheus

prometheus.register()      # the process-wide scheduler, the default registry
start_http_server(9000)    # or serve prometheus_client.make_asgi_app() in your app
```

Exported, each with a `lane` label: counters `tasklanes_tasks_completed_total`,
`_failed_total`, `_timed_out_total`, `_cancelled_total`, `_crashed_total`, `_retried_total`,
`tasklanes_workers_killed_total`, `tasklanes_worker_cpu_seconds_total`; histograms
`tasklanes_task_wait_seconds` and `tasklanes_task_run_seconds`; gauges
`tasklanes_tasks_running`, `_waiting`, `_limited`, `tasklanes_lane_capacity`,
`tasklanes_error_ratio`, `tasklanes_threads_alive`, `tasklanes_worker_memory_bytes`,
`tasklanes_loop_lag_p99_seconds` and `tasklanes_loop_lag_max_seconds`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ._figures import COUNTERS, GAUGES, HISTOGRAM_BOUNDS, TIMINGS, cumulative_counts, need, resolve

if TYPE_CHECKING:
    from .._scheduler import Scheduler

__all__ = ["TasklanesCollector", "register"]


class TasklanesCollector:
    """A custom collector: reads `Scheduler.stats()` at each scrape."""

    def __init__(self, scheduler: Callable[[], Scheduler]) -> None:
        self._core = need("prometheus_client.core", "prometheus")
        self._scheduler = scheduler

    def describe(self) -> list[Any]:
        # Names only, so that registering checks for clashes without a scrape.
        core = self._core
        out: list[Any] = []
        for name, doc, _ in COUNTERS:
            out.append(core.CounterMetricFamily(name, doc, labels=["lane"]))
        for name, doc, _ in GAUGES:
            out.append(core.GaugeMetricFamily(name, doc, labels=["lane"]))
        for name, doc, _ in TIMINGS:
            out.append(core.HistogramMetricFamily(name, doc, labels=["lane"]))
        return out

    def collect(self) -> Iterator[Any]:
        core = self._core
        sched = self._scheduler()
        snapshots = sched.stats()
        histograms = sched._histograms()
        for name, doc, read in COUNTERS:
            counter = core.CounterMetricFamily(name, doc, labels=["lane"])
            for kind, snap in snapshots.items():
                counter.add_metric([kind], read(snap))
            yield counter
        for name, doc, read in GAUGES:
            gauge = core.GaugeMetricFamily(name, doc, labels=["lane"])
            for kind, snap in snapshots.items():
                gauge.add_metric([kind], read(snap))
            yield gauge
        for name, doc, which in TIMINGS:
            family = core.HistogramMetricFamily(name, doc, labels=["lane"])
            for kind, figures in histograms.items():
                hist, count, total = figures[which]
                counts = cumulative_counts(hist)
                buckets = [
                    (repr(b), float(c)) for b, c in zip(HISTOGRAM_BOUNDS, counts, strict=True)
                ]
                buckets.append(("+Inf", float(count)))
                family.add_metric([kind], buckets, total)
            yield family


def register(scheduler: Scheduler | None = None, registry: Any = None) -> TasklanesCollector:
    """Add a collector of `scheduler`'s figures to `registry`, and return it.

    Defaults: the process-wide scheduler ([get_scheduler][tasklanes.get_scheduler],
    read at each scrape) and `prometheus_client.REGISTRY`. Unregister with
    `registry.unregister(collector)`. Needs the `prometheus` extra.
    """
    pc = need("prometheus_client", "prometheus")
    collector = TasklanesCollector(resolve(scheduler))
    (pc.REGISTRY if registry is None else registry).register(collector)
    return collector
