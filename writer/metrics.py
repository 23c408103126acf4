"""The writer's Prometheus metrics (README, "Metrics"); served by `emm.metrics.serve`."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

from emm.metrics import LATENCY_BUCKETS_S

CONSUMED = Counter(
    "emm_writer_messages_consumed_total",
    "Messages taken from emm.readings, by kind (reading, gateway_status)",
    ["kind"],
)
WRITTEN = Counter(
    "emm_writer_messages_written_total",
    "Messages InfluxDB took, by kind (reading: one `energy` point per meter per tick)",
    ["kind"],
)
DEAD_LETTERED = Counter(
    "emm_writer_messages_dead_lettered_total", "Messages of emm.readings dead-lettered"
)
WRITE_FAILURES = Counter(
    "emm_writer_write_failures_total", "Writes InfluxDB did not take and that are retried"
)
WRITE_SECONDS = Histogram(
    "emm_writer_write_seconds",
    "Successful InfluxDB writes: how long each took",
    buckets=LATENCY_BUCKETS_S,
)
BATCH_SIZE = Histogram(
    "emm_writer_batch_messages",
    "Successful InfluxDB writes: messages per write",
    buckets=(1, 10, 50, 100, 500, 1000, 2500, 5000, 10000, 25000, 65535),
)
HELD = Gauge("emm_writer_messages_held", "Messages held, waiting for their batch to be written")
BROKER_CONNECTED = Gauge(
    "emm_writer_broker_connected", "1 while the connection to RabbitMQ is up, else 0"
)


def watch(*, connected: Callable[[], bool], held: Callable[[], int]) -> None:
    """Read the broker's connection state and the messages held at every scrape."""
    BROKER_CONNECTED.set_function(lambda: float(connected()))
    HELD.set_function(lambda: float(held()))
