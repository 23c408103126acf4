"""The worker's Prometheus metrics (README, "Metrics"); served by `emm.metrics.serve`.

Counters move where the event happens (`worker.consumer`, `worker.reader`); the gauges are
read from the worker's state when Prometheus scrapes (`watch`), so they cost nothing between
scrapes. Labels: the gateway (host:port), an outcome, an error code; never a meter or register.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

from emm.metrics import LATENCY_BUCKETS_S

JOBS_CONSUMED = Counter(
    "emm_worker_jobs_consumed_total", "Jobs delivered to this worker (decoded, not yet read)"
)
JOBS_LATE = Counter(
    "emm_worker_jobs_late_total",
    "Jobs not read because they reached the worker, or a connection to their gateway, more "
    "than half a tick after their tick",
)
JOBS_DEAD_LETTERED = Counter(
    "emm_worker_jobs_dead_lettered_total", "Jobs dead-lettered (malformed, or a fault of ours)"
)
READS = Counter(
    "emm_worker_reads_total",
    "Meter reads by outcome (ok, partial, failed, skipped_offline) and error code (the first "
    "error of the read; empty when ok)",
    ["outcome", "error_code"],
)
READINGS_PUBLISHED = Counter(
    "emm_worker_readings_published_total", "Readings RabbitMQ confirmed to emm.readings"
)
MODBUS_REQUEST = Histogram(
    "emm_worker_modbus_request_seconds",
    "Modbus requests by gateway: time from sending to the answer (or the timeout)",
    ["gateway"],
    buckets=LATENCY_BUCKETS_S,
)
DEVICES_UP = Gauge("emm_worker_devices_up", "Devices whose last read got an answer")
DEVICES_OFFLINE = Gauge(
    "emm_worker_devices_offline", "Devices polled with backoff after failed ticks"
)
OUTBOX = Gauge("emm_worker_outbox_readings", "Readings waiting for RabbitMQ's confirm")
BROKER_CONNECTED = Gauge(
    "emm_worker_broker_connected", "1 while the connection to RabbitMQ is up, else 0"
)
TICK_LAG = Gauge(
    "emm_worker_tick_lag_seconds",
    "Now minus the tick of the oldest job being worked on (0 when idle)",
)


def watch(
    *,
    connected: Callable[[], bool],
    outbox: Callable[[], int],
    devices: Callable[[], tuple[int, int]],
    oldest_tick_ms: Callable[[], int | None],
) -> None:
    """Read the gauges from the worker's state at every scrape: the broker connection, the
    outbox, the devices (up, offline) and the oldest tick in work."""
    BROKER_CONNECTED.set_function(lambda: float(connected()))
    OUTBOX.set_function(lambda: float(outbox()))
    DEVICES_UP.set_function(lambda: float(devices()[0]))
    DEVICES_OFFLINE.set_function(lambda: float(devices()[1]))

    def lag() -> float:
        tick_ms = oldest_tick_ms()
        return 0.0 if tick_ms is None else max(0.0, time.time() - tick_ms / 1000)

    TICK_LAG.set_function(lag)
