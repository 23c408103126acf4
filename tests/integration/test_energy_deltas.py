"""The writer's `energy_delta` points through RabbitMQ and InfluxDB 1.x, across a writer restart
(the counters' history restored from InfluxDB) and a redelivery of a reading already stored."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from broker import READINGS
from devservices.readers import InfluxQL
from emm.messages import Meter, Reading, Status
from emm.settings import WriterSettings
from tests.integration.amqp_util import publish
from writer.app import Writer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

# on the hour two hours ago: the writer refuses ticks far in the future or the past
TICK = (int(time.time() * 1000) // 3_600_000 - 2) * 3_600_000
METER = Meter(7, "127.0.0.1", 502, 1, "sdm630", "delta test")


def reading(k: int, energy: float) -> Reading:
    return Reading(
        METER,
        TICK + k * 60_000,
        {"importActiveEnergy": energy, "voltageL1": 230.0},
        Status(True, latency_ms=2.0, requests=1),
        counters=("importActiveEnergy",),
    )


def run_writer(settings: WriterSettings, done: Callable[[], bool]) -> None:
    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(Writer(settings).run(stop))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not task.done():
            await asyncio.sleep(0.2)
            if await asyncio.to_thread(done):
                break
        stop.set()
        await asyncio.wait_for(task, 20)

    asyncio.run(scenario())


def deltas(influx: InfluxQL) -> list[tuple[int, float, int]]:
    rows = influx.query('SELECT "importActiveEnergy", "gap_ticks" FROM "energy_delta"')
    return [(r["time"], r["importActiveEnergy"], r["gap_ticks"]) for r in rows]


def test_deltas_survive_a_restart_and_a_redelivery(amqp_url: str, influx_v1: InfluxQL) -> None:
    settings = WriterSettings(
        amqp_url=amqp_url,
        influx_url=influx_v1.url,
        influx_api="v1",
        influx_bucket=influx_v1.database,
        read_cron="* * * * *",
        flush_interval_ms=100,
    )
    first = [reading(0, 100.0), reading(1, 100.25), reading(2, 100.5)]
    publish(amqp_url, READINGS, [r.encode() for r in first])
    run_writer(settings, lambda: len(deltas(influx_v1)) == 2)
    assert deltas(influx_v1) == [(TICK + 60_000, 0.25, 0), (TICK + 120_000, 0.25, 0)]

    # A new writer: after a gap of two ticks, reading 2 again (its ack was lost), then a reset.
    again = [reading(5, 101.5), reading(2, 100.5), reading(6, 0.125)]
    publish(amqp_url, READINGS, [r.encode() for r in again])
    run_writer(settings, lambda: len(deltas(influx_v1)) == 4)
    assert deltas(influx_v1) == [
        (TICK + 60_000, 0.25, 0),
        (TICK + 120_000, 0.25, 0),
        (TICK + 300_000, 1.0, 2),
        (TICK + 360_000, 0.125, 0),
    ]
    [flag] = influx_v1.query(
        'SELECT "counter_reset_fields" FROM "meter_status" WHERE "counter_resets" > 0'
    )
    assert (flag["time"], flag["counter_reset_fields"]) == (TICK + 360_000, "importActiveEnergy")
