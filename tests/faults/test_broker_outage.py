"""RabbitMQ dies (SIGKILL) or restarts cleanly in the middle of a run: nothing lost or doubled."""

from __future__ import annotations

import time

import pytest

from devservices.influx import PrivateInfluxDB
from devservices.processes import Processes
from devservices.rabbitmq import PrivateRabbitMQ
from tests.faults.harness import Pipeline, now_ms, tick_floor, wait_all_stored

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]


def test_broker_killed_for_30_s(
    pg_dsn: str, rabbit: PrivateRabbitMQ, influx: PrivateInfluxDB, processes: Processes
) -> None:
    pipeline = Pipeline(processes, pg_dsn, rabbit.url, influx.url, meters=100, period_s=5)
    first = pipeline.run()
    p_ms = pipeline.period_ms
    time.sleep(max(0.0, (first + 2 * p_ms + p_ms // 2 - now_ms()) / 1000))
    rabbit.kill()
    killed_at = now_ms()
    time.sleep(30)
    rabbit.start()
    back_at = now_ms()
    # Ten ticks in all, at least two after the broker's return.
    last = max(first + 9 * p_ms, tick_floor(back_at, pipeline.period_s) + 2 * p_ms)
    time.sleep(max(0.0, (last - now_ms()) / 1000))
    # The ticks of the outage are read by the workers on their own, which on a loaded machine
    # may end a read begun in time in the simulator's next step: those values are the meter's.
    verdict = wait_all_stored(pipeline, influx, first, last, limit_s=60, straddle=True)
    caught_up_s = (now_ms() - back_at) / 1000
    assert pipeline.alive() == dict.fromkeys(pipeline.alive()), {
        n: pipeline.log(n)[-2000:] for n, c in pipeline.alive().items() if c is not None
    }
    assert verdict.lost == [], str(verdict)
    assert verdict.dup == [], str(verdict)
    assert verdict.stored == 100 * ((last - first) // p_ms + 1)
    assert caught_up_s < 60
    assert killed_at < back_at
    # The ticks during the outage were read by the workers on their own.
    assert "RabbitMQ unreachable at tick" in pipeline.log("worker0") + pipeline.log("worker1")


def test_broker_restarted_cleanly_three_times(
    pg_dsn: str, rabbit: PrivateRabbitMQ, influx: PrivateInfluxDB, processes: Processes
) -> None:
    pipeline = Pipeline(processes, pg_dsn, rabbit.url, influx.url, meters=100, period_s=5)
    first = pipeline.run()
    p_ms = pipeline.period_ms
    for _ in range(3):
        time.sleep(2 * pipeline.period_s + 1.3)
        rabbit.stop()
        rabbit.start()
    back_at = now_ms()
    last = tick_floor(back_at, pipeline.period_s) + 2 * p_ms
    time.sleep(max(0.0, (last - now_ms()) / 1000))
    verdict = wait_all_stored(pipeline, influx, first, last, limit_s=60)
    assert pipeline.alive() == dict.fromkeys(pipeline.alive()), {
        n: pipeline.log(n)[-2000:] for n, c in pipeline.alive().items() if c is not None
    }
    assert verdict.lost == [], str(verdict)
    assert verdict.dup == [], str(verdict)
    assert (now_ms() - back_at) / 1000 < 60
