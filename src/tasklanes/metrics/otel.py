"""The scheduler's figures as OpenTelemetry observable instruments (extra: `otel`).

```python
from tasklanes.metrics import otel

otel.instrument()  # the process-wide scheduler, the global MeterProvider
```

The same names as [tasklanes.metrics.prometheus][], each with a `lane` attribute:
observable counters `tasklanes_tasks_completed` and the others (an OpenTelemetry
Prometheus exporter adds the `_total` suffix itself), observable gauges
`tasklanes_tasks_running` and the others, and, since OpenTelemetry has no observable
histogram, `tasklanes_task_wait_seconds` and `tasklanes_task_run_seconds` as gauges
with a `quantile` attribute (`"0.5"`, `"0.9"`, `"0.99"`, `"max"`, `"mean"`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .. import __version__
from ._figures import COUNTERS, GAUGES, TIMINGS, need, resolve

if TYPE_CHECKING:
    from .._scheduler import Scheduler
    from .._snapshots import LaneSnapshot

__all__ = ["Instruments", "instrument"]


class Instruments:
    """The instruments `instrument()` created (keep it to keep them referenced)."""

    def __init__(self, meter: Any, instruments: list[Any]) -> None:
        self.meter = meter
        self.instruments = instruments


def instrument(scheduler: Scheduler | None = None, meter_provider: Any = None) -> Instruments:
    """Create observable instruments that read `scheduler`'s figures at each collection.

    Defaults: the process-wide scheduler (read at each collection) and the global
    `MeterProvider` (`opentelemetry.metrics.get_meter_provider()`). Needs the `otel`
    extra.
    """
    metrics = need("opentelemetry.metrics", "otel")
    read_scheduler = resolve(scheduler)
    provider = metrics.get_meter_provider() if meter_provider is None else meter_provider
    meter = provider.get_meter("tasklanes", __version__)

    def per_lane(read: Callable[[LaneSnapshot], float]) -> Callable[[Any], Iterable[Any]]:
        def callback(options: Any) -> Iterable[Any]:
            return [
                metrics.Observation(read(snap), {"lane": kind})
                for kind, snap in read_scheduler().stats().items()
            ]

        return callback

    def timing(which: str) -> Callable[[Any], Iterable[Any]]:
        def callback(options: Any) -> Iterable[Any]:
            out = []
            for kind, snap in read_scheduler().stats().items():
                t = snap[which]
                for quantile, value in (
                    ("0.5", t.p50), ("0.9", t.p90), ("0.99", t.p99),
                    ("max", t.max), ("mean", t.mean),
                ):  # fmt: skip
                    out.append(metrics.Observation(value, {"lane": kind, "quantile": quantile}))
            return out

        return callback

    made: list[Any] = []
    for name, doc, read in COUNTERS:
        made.append(meter.create_observable_counter(name, [per_lane(read)], description=doc))
    for name, doc, read in GAUGES:
        made.append(meter.create_observable_gauge(name, [per_lane(read)], description=doc))
    for name, doc, which in TIMINGS:
        made.append(meter.create_observable_gauge(name, [timing(which)], description=doc, unit="s"))
    return Instruments(meter, made)
