"""Exporters of the scheduler's figures to monitoring systems (optional extras).

* [tasklanes.metrics.prometheus][]: `register(scheduler=None, registry=None)`, a
  `prometheus_client` collector (`pip install 'tasklanes[prometheus]'`);
* [tasklanes.metrics.otel][]: `instrument(scheduler=None, meter_provider=None)`,
  OpenTelemetry observable instruments (`pip install 'tasklanes[otel]'`).

Both read `Scheduler.stats()` when scraped; nothing is added to a task's hot path.
Metric names start with `tasklanes_` and carry a `lane` label (`io`, `blocking`, `cpu`).
"""

from __future__ import annotations

from ._figures import COUNTERS, GAUGES, HISTOGRAM_BOUNDS, TIMINGS

__all__ = ["COUNTERS", "GAUGES", "HISTOGRAM_BOUNDS", "TIMINGS"]
