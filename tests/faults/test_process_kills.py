"""Workers and the writer die (SIGKILL) in the middle of their work: nothing lost or doubled."""

from __future__ import annotations

import random
import time

import pytest

from devservices.influx import PrivateInfluxDB
from devservices.net import wait_for
from devservices.processes import Processes
from devservices.rabbitmq import PrivateRabbitMQ
from tests.faults.harness import Pipeline, now_ms, tick_floor, wait_all_stored

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]


def test_workers_killed_five_times(
    pg_dsn: str, rabbit: PrivateRabbitMQ, influx: PrivateInfluxDB, processes: Processes
) -> None:
    # 200 meters each on a port of its own, 100 ms per request: a tick's jobs are in flight
    # for about 0.4 s, which is when the kills land. 10 ticks (2,000 meter-ticks), a kill in
    # five of ticks 2 to 7, two ticks after the last.
    pipeline = Pipeline(
        processes,
        pg_dsn,
        rabbit.url,
        influx.url,
        meters=200,
        period_s=5,
        workers=2,
        simulator_args=["--port-per-meter", "--latency-ms", "100"],
    )
    first = pipeline.run()
    p_ms = pipeline.period_ms
    rng = random.Random()
    kill_ticks = sorted(rng.sample(range(2, 8), 5))
    for n in kill_ticks:
        at = first + n * p_ms + rng.randint(100, 300)
        time.sleep(max(0.0, (at - now_ms()) / 1000))
        victim = f"worker{rng.randrange(2)}"
        pipeline.kill(victim)
        pipeline.start(victim)
    last = first + 9 * p_ms  # 10 ticks x 200 meters = 2,000 meter-ticks
    time.sleep(max(0.0, (last - now_ms()) / 1000))
    verdict = wait_all_stored(pipeline, influx, first, last, limit_s=30)
    assert verdict.lost == [], str(verdict)
    assert verdict.dup == [], str(verdict)
    assert verdict.stored == 2000
    logs = pipeline.log("worker0") + pipeline.log("worker1")
    redelivered = logs.count("delivered again")
    assert redelivered >= 1, "no job was delivered again: the kills did not bite"


def test_writer_killed_with_a_half_full_batch(
    pg_dsn: str, rabbit: PrivateRabbitMQ, influx: PrivateInfluxDB, processes: Processes
) -> None:
    pipeline = Pipeline(
        processes,
        pg_dsn,
        rabbit.url,
        influx.url,
        meters=100,
        period_s=2,
        workers=1,
        # A batch of 250 readings that is only flushed by count: after one tick it holds 100.
        extra_env={"EMM_WRITER_BATCH_SIZE": "250", "EMM_WRITER_FLUSH_INTERVAL_MS": "60000"},
    )
    first = pipeline.run()
    p_ms = pipeline.period_ms
    # Two ticks in: 200 readings, of which the writer holds a batch-in-waiting, none written.
    time.sleep(max(0.0, (first + p_ms + 1500 - now_ms()) / 1000))
    assert influx.query("SELECT count(up) FROM meter_status") == []
    pipeline.kill("writer")
    pipeline.extra_env = {}
    pipeline.start("writer")
    last = tick_floor(now_ms(), pipeline.period_s) + 3 * p_ms
    time.sleep(max(0.0, (last - now_ms()) / 1000))
    verdict = wait_all_stored(pipeline, influx, first, last, limit_s=30)
    assert verdict.lost == [], str(verdict)
    assert verdict.dup == [], str(verdict)
    wait_for(lambda: "writer started" in pipeline.log("writer"), 5)
