"""The outbox keeps each reading for redeliveries of its job until that job would be too late."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest

from broker import Broker
from emm.errors import BrokerError
from emm.messages import Job, Meter, Reading, Status
from emm.plan import Plan
from emm.registers import DataType, Register
from worker.outbox import Outbox

pytestmark = pytest.mark.timeout(10)

REG = Register("v", 0, 3, DataType.INT16)
PERIOD = 5_000


def job(meter_id: int, tick_ms: int) -> Job:
    meter = Meter(meter_id, "127.0.0.1", 502, meter_id, "virtual_modbustcp")
    return Job(meter, tick_ms, tick_ms + PERIOD, Plan.build((REG,)))


def reading(j: Job) -> Reading:
    return Reading(j.meter, j.tick_ms, {"v": 1.0}, Status(True))


def test_readings_are_kept_until_confirmed_and_their_jobs_too_late() -> None:
    now = [0]
    outbox = Outbox(Broker("amqp://unused"), clock=lambda: now[0])
    first, second = job(1, 0), job(2, PERIOD)
    out1 = outbox.put(first, reading(first))
    out2 = outbox.put(second, reading(second))
    assert outbox.pending == 2
    assert outbox.recent(first.job_id) is out1
    assert out1.keep_until_ms == 2 * PERIOD  # the deadline, and one period more
    now[0] = 10 * PERIOD
    outbox.prune()
    assert outbox.recent(first.job_id) is out1  # not confirmed yet: kept
    out1.confirmed.set()
    outbox.prune()
    assert outbox.recent(first.job_id) is None
    assert outbox.recent(second.job_id) is out2  # in order: an unconfirmed one stops pruning
    now[0] = 3 * PERIOD
    out2.confirmed.set()
    outbox.prune()
    assert outbox.recent(second.job_id) is out2  # its job could still be read in time
    assert outbox.recent(job(3, 0).job_id) is None


class FlakyBroker:
    """A broker whose publishes fail while `down` is set (pure logic: no RabbitMQ)."""

    def __init__(self) -> None:
        self.down = True
        self.published: list[str | None] = []

    async def publish(
        self, _queue: str, _body: bytes, *, exchange: str = "", message_id: str | None = None
    ) -> None:
        if self.down:
            raise BrokerError("not connected to RabbitMQ")
        self.published.append(message_id)


def test_an_outage_is_one_line_when_it_starts_and_one_when_the_held_readings_are_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        broker = FlakyBroker()
        outbox = Outbox(broker)  # type: ignore[arg-type]
        outbox.start(2)
        for meter_id in range(1, 6):
            j = job(meter_id, 0)
            outbox.put(j, reading(j))
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # several retries each
        broker.down = False
        while outbox.pending:
            await asyncio.sleep(0.05)
        j = job(9, 0)
        outbox.put(j, reading(j))  # after the outage: no line of its own
        while outbox.pending:
            await asyncio.sleep(0.05)
        await outbox.stop(0)
        assert len(broker.published) == 6

    caplog.set_level(logging.INFO, logger="worker.outbox")
    asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert re.fullmatch(
        r"outbox: readings not published since \S+Z: not connected to RabbitMQ; holding them",
        lines[0],
    )
    assert re.fullmatch(
        r"outbox: RabbitMQ back after [12] s; 5 buffered readings published", lines[1]
    )
