"""Reading one job (worker.reader.read_job) against a fake gateway link: requests, holes, status."""

from __future__ import annotations

import asyncio
import time

import pytest

from emm.errors import PermanentDeviceError, TransientDeviceError
from emm.messages import Job, Meter
from emm.plan import Plan
from emm.planner import ReadLimits
from emm.registers import DataType, Register
from worker.device import Device
from worker.health import Health, OfflinePolicy
from worker.holes import Holes
from worker.reader import read_job

pytestmark = pytest.mark.timeout(10)

METER = Meter(4, "192.0.2.4", 502, 1, "virtual")


class FakeLink:
    """Answers words equal to their addresses; exception 2 for addresses outside `mapped`;
    a timeout for every request from the `dead_from`th on."""

    def __init__(self, mapped: set[int], dead_from: int | None = None) -> None:
        self.mapped = mapped
        self.dead_from = dead_from
        self.lock = asyncio.Lock()
        self.requests: list[tuple[int, int, int]] = []

    async def read(self, function_code: int, address: int, count: int, unit_id: int) -> list[int]:
        assert self.lock.locked(), "requests on a link never overlap"
        self.requests.append((function_code, address, count))
        if self.dead_from is not None and len(self.requests) >= self.dead_from:
            raise TransientDeviceError(f"no answer at {address}", code="timeout")
        if any(a not in self.mapped for a in range(address, address + count)):
            raise PermanentDeviceError(f"refused {address}", exception_code=2)
        return list(range(address, address + count))


def device(link: FakeLink) -> Device:
    key = (METER.host, METER.port, METER.unit_id)
    return Device(key, link, Health(OfflinePolicy(3, 60)), Holes())


def job(registers: tuple[Register, ...], gap: int = 50) -> Job:
    tick_ms = int(time.time() * 1000)
    return Job(METER, tick_ms, tick_ms + 10_000, Plan.build(registers, ReadLimits(max_gap=gap)))


def regs(*addresses: int, fc: int = 3) -> tuple[Register, ...]:
    return tuple(Register(f"r{a}", a, fc, DataType.UINT16) for a in addresses)


def test_every_planned_request_is_read_and_decoded() -> None:
    link = FakeLink(set(range(300)))
    reading = asyncio.run(read_job(job(regs(0, 1, 200), gap=10), device(link), attempts=3))
    assert reading.fields == {"r0": 0.0, "r1": 1.0, "r200": 200.0}
    assert (reading.errors, reading.missing) == ({}, ())
    assert (reading.status.up, reading.status.error_code, reading.status.requests) == (True, "", 2)
    assert link.requests == [(3, 0, 2), (3, 200, 1)]


def test_a_hole_is_split_once_and_the_device_remembers_the_split(
    caplog: pytest.LogCaptureFixture,
) -> None:
    link = FakeLink({0, 1})
    dev = device(link)
    the_job = job(regs(0, 2, 3))
    first = asyncio.run(read_job(the_job, dev, attempts=3))
    second = asyncio.run(read_job(the_job, dev, attempts=3))
    for reading in (first, second):
        assert reading.fields == {"r0": 0.0}
        assert sorted(reading.errors) == ["r2", "r3"]
        assert (reading.status.up, reading.status.error_code) == (True, "modbus_exception_2")
    # the merged read, the halves [0] and [2, 3], then 2 and 3 alone; next tick only [0]
    assert [first.status.requests, second.status.requests] == [5, 1]
    assert dev.holes.unreadable() == {"r2", "r3"}
    assert [r.getMessage() for r in caplog.records if "crosses a hole" in r.getMessage()] == [
        "meter 4 (192.0.2.4:502 unit 1): FC3 read of 4 at 0 crosses a hole; "
        "split into 1 request(s); never readable: r2, r3"
    ]


def test_a_device_gone_silent_loses_the_rest_of_the_job() -> None:
    link = FakeLink(set(range(300)), dead_from=2)
    reading = asyncio.run(read_job(job(regs(0, 100, 200), gap=0), device(link), attempts=1))
    assert reading.fields == {"r0": 0.0}
    assert reading.errors == {"r100": "no answer at 100", "r200": "no answer at 100"}
    assert (reading.status.up, reading.status.error_code) == (True, "timeout")
    assert reading.status.requests == 2


def test_a_device_that_never_answers_is_down() -> None:
    link = FakeLink(set(range(10)), dead_from=1)
    reading = asyncio.run(read_job(job(regs(0)), device(link), attempts=2))
    assert reading.fields == {}
    assert (reading.status.up, reading.status.error_code, reading.status.requests) == (
        False,
        "timeout",
        2,
    )


def test_an_exception_answer_loses_only_its_request() -> None:
    link = FakeLink({0, 200})
    reading = asyncio.run(read_job(job(regs(0, 100, 200), gap=0), device(link), attempts=3))
    assert reading.fields == {"r0": 0.0, "r200": 200.0}
    assert reading.errors == {"r100": "refused 100"}
    assert (reading.status.up, reading.status.error_code) == (True, "modbus_exception_2")
