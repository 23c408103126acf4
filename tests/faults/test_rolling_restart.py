"""A rolling update of the workers: each in turn gets SIGTERM, drains, and is replaced;
nothing is lost or doubled."""

from __future__ import annotations

import re
import time

import pytest

from devservices.influx import PrivateInfluxDB
from devservices.net import wait_for
from devservices.processes import Processes
from devservices.rabbitmq import PrivateRabbitMQ
from tests.faults.harness import Pipeline, now_ms, published_ticks, wait_all_stored

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

DRAIN_S = 5


def test_every_worker_restarted_in_turn_with_sigterm(
    pg_dsn: str, rabbit: PrivateRabbitMQ, influx: PrivateInfluxDB, processes: Processes
) -> None:
    # 100 meters behind 20 gateway ports, 30 ms per answer: a gateway's five meters are read
    # one after the other just after each tick, when the SIGTERMs land.
    pipeline = Pipeline(
        processes,
        pg_dsn,
        rabbit.url,
        influx.url,
        meters=100,
        period_s=5,
        workers=3,
        profile="virtual_modbustcp",
        simulator_args=["--units-per-port", "5", "--latency-ms", "30"],
        extra_env={"EMM_DRAIN_S": str(DRAIN_S)},
    )
    first = pipeline.run()
    p_ms = pipeline.period_ms
    stops: list[float] = []
    for n in range(3):
        # one worker at a time: SIGTERM as soon as a tick's jobs are out, while it reads them,
        # then its replacement
        tick = first + (1 + 2 * n) * p_ms
        wait_for(lambda t=tick: max(published_ticks(pipeline.log("scheduler"))) >= t, 30, 0.05)
        started = time.monotonic()
        assert processes.stop(f"worker{n}", timeout_s=DRAIN_S + 10) == 0
        stops.append(time.monotonic() - started)
        pipeline.start(f"worker{n + 3}")
    # from the tick of the first restart (the first tick is the start-up's, when the workers
    # share the shards out), 8 ticks x 100 meters = 800 meter-ticks
    last = first + 8 * p_ms
    time.sleep(max(0.0, (last - now_ms()) / 1000))
    verdict = wait_all_stored(pipeline, influx, first + p_ms, last, limit_s=30)
    assert verdict.lost == [], str(verdict)
    assert verdict.dup == [], str(verdict)
    assert verdict.stored == 800
    assert max(stops) < DRAIN_S + 2, stops
    finished = 0
    for n in range(3):
        stopped = re.findall(
            r"drained in \S+ s: (\d+) jobs in flight finished", pipeline.log(f"worker{n}")
        )
        assert len(stopped) == 1, pipeline.log(f"worker{n}")[-2000:]
        finished += int(stopped[0])
    assert finished >= 1, "no job was in flight at a SIGTERM: the drain was not exercised"
