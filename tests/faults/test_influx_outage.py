"""InfluxDB is down for 4 minutes (longer than influxdb-client's 180 s retry window) under 200
meters every 10 s: nothing lost or dead-lettered, the writer's memory stays bounded by its
prefetch, and the backlog drains once InfluxDB is back."""

from __future__ import annotations

import time

import pytest

from broker import READINGS
from devservices.influx import PrivateInfluxDB
from devservices.processes import Processes
from devservices.rabbitmq import PrivateRabbitMQ
from tests.faults.harness import Pipeline, now_ms, tick_floor, wait_all_stored

pytestmark = [pytest.mark.integration, pytest.mark.timeout(480)]

OUTAGE_S = 240
BATCH = 100  # the writer's prefetch is twice its batch size


def test_influxdb_down_for_four_minutes(
    pg_dsn: str, rabbit: PrivateRabbitMQ, influx: PrivateInfluxDB, processes: Processes
) -> None:
    pipeline = Pipeline(
        processes,
        pg_dsn,
        rabbit.url,
        influx.url,
        meters=200,
        period_s=10,
        workers=1,
        extra_env={"EMM_WRITER_BATCH_SIZE": str(BATCH), "EMM_WRITER_RETRY_MAX_S": "5"},
    )
    first = pipeline.run()
    p_ms = pipeline.period_ms
    time.sleep(max(0.0, (first + p_ms + 3000 - now_ms()) / 1000))
    rss_before = pipeline.rss_mb("writer")

    influx.stop()
    down_at = now_ms()
    time.sleep(OUTAGE_S / 2)
    ready_mid, unacked_mid = rabbit.queue_counts(READINGS)
    time.sleep(OUTAGE_S / 2 - 5)
    ready_end, unacked_end = rabbit.queue_counts(READINGS)
    rss_end = pipeline.rss_mb("writer")
    influx.start()
    back_at = now_ms()

    # The writer holds exactly its prefetch unacked; the rest waits in RabbitMQ.
    assert (unacked_mid, unacked_end) == (2 * BATCH, 2 * BATCH)
    assert ready_end > ready_mid > 0
    assert ready_end + unacked_end >= 200 * (OUTAGE_S // pipeline.period_s - 2)
    assert rss_end - rss_before < 30, (rss_before, rss_end)

    last = tick_floor(back_at, pipeline.period_s) + p_ms
    verdict = wait_all_stored(pipeline, influx, first, last, limit_s=120)
    drained_s = (now_ms() - back_at) / 1000
    assert verdict.lost == [], str(verdict)
    assert verdict.dup == [], str(verdict)
    assert verdict.stored == 200 * ((last - first) // p_ms + 1)
    assert rabbit.queue_depth(f"{READINGS}.dead") == 0
    assert pipeline.alive()["writer"] is None
    assert down_at < back_at
    assert drained_s < 120
    assert " back after " in pipeline.log("writer")
