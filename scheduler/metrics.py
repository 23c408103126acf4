"""The scheduler's Prometheus metrics (README, "Metrics"); served by `emm.metrics.serve`."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge

TICKS = Counter("emm_scheduler_ticks_total", "Ticks the scheduler published jobs for")
JOBS_PUBLISHED = Counter(
    "emm_scheduler_jobs_published_total", "Jobs RabbitMQ confirmed (one per meter per tick)"
)
JOBS_UNPUBLISHED = Counter(
    "emm_scheduler_jobs_unpublished_total",
    "Jobs not confirmed within half a tick (RabbitMQ unreachable); not read from the queue",
)
METERS = Gauge("emm_scheduler_meters", "Meters with a job on the last tick")
LAST_TICK = Gauge(
    "emm_scheduler_last_tick_timestamp_seconds", "The last tick published (Unix seconds)"
)
BROKER_CONNECTED = Gauge(
    "emm_scheduler_broker_connected", "1 while the connection to RabbitMQ is up, else 0"
)


def watch(*, connected: Callable[[], bool]) -> None:
    """Read the broker's connection state at every scrape."""
    BROKER_CONNECTED.set_function(lambda: float(connected()))
