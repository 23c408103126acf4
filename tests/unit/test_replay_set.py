"""Which meters a worker reads on its own while RabbitMQ is away (Replay.jobs)."""

from __future__ import annotations

import pytest

from broker import Broker
from emm.messages import Job, Meter
from emm.plan import Plan
from emm.registers import DataType, Register
from worker.outbox import Outbox
from worker.replay import Replay

pytestmark = pytest.mark.timeout(10)

REG = Register("v", 0, 3, DataType.INT16)
PERIOD = 5_000


def job(meter_id: int, tick_ms: int) -> Job:
    meter = Meter(meter_id, "127.0.0.1", 502, meter_id, "virtual_modbustcp")
    return Job(meter, tick_ms, tick_ms + PERIOD, Plan.build((REG,)))


def replay(given: dict[int, list[int]]) -> list[int]:
    broker = Broker("amqp://unused")
    replay = Replay(broker, Outbox(broker), outbox_max=1)
    for tick, meters in sorted(given.items()):
        for m in meters:
            replay.remember(job(m, tick))
    return sorted(replay.jobs())


def test_the_meters_of_the_last_tick() -> None:
    assert replay({0: [1, 3, 5], PERIOD: [1, 3, 5]}) == [1, 3, 5]
    assert replay({0: [1, 3, 5], PERIOD: [2, 4, 6]}) == [2, 4, 6]


def test_a_last_tick_cut_short_adds_the_meters_of_the_tick_before() -> None:
    # The connection went while tick 2's jobs were arriving: 5 was still in the broker.
    assert replay({0: [1, 3, 5], PERIOD: [1, 3]}) == [1, 3, 5]


def test_a_gap_between_ticks_does_not_count_as_the_tick_before() -> None:
    assert replay({0: [1, 3, 5], 3 * PERIOD: [1]}) == [1]
