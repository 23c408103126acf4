"""Reading one job (worker.reader.read_job) against a fake gateway link: requests, holes, status."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from msgspec.structs import replace

from emm.errors import BusyAnswer, NoAnswer, PermanentDeviceError
from emm.messages import Gateway, Job, Meter, Reading
from emm.plan import Plan
from emm.planner import ReadLimits
from emm.registers import DataType, Register
from worker.budget import REPORT_AFTER_MS, GatewayLoad
from worker.device import Device
from worker.health import Health, OfflinePolicy
from worker.holes import Holes
from worker.reader import SILENT_TIMEOUT_SHARE, read_job

pytestmark = pytest.mark.timeout(10)

METER = Meter(4, "192.0.2.4", 502, 1, "virtual")


class FakeLink:
    """Answers words equal to their addresses; exception 2 for addresses outside `mapped`;
    no answer for every request from the `dead_from`th on."""

    timeout_s = 1.0
    name = "192.0.2.4:502"

    def __init__(
        self, mapped: set[int], dead_from: int | None = None, waits_out_timeouts: bool = False
    ) -> None:
        self.mapped = mapped
        self.dead_from = dead_from
        self.waits_out_timeouts = waits_out_timeouts
        self.held = False
        self.closed = 0
        self.requests: list[tuple[int, int, int]] = []
        self.timeouts: list[float] = []

    def close(self) -> None:
        self.closed += 1

    async def read(
        self, function_code: int, address: int, count: int, unit_id: int, *, timeout_s: float
    ) -> list[int]:
        assert self.held, "requests go over a link the job holds alone"
        self.requests.append((function_code, address, count))
        self.timeouts.append(timeout_s)
        if self.dead_from is not None and len(self.requests) >= self.dead_from:
            if self.waits_out_timeouts:
                await asyncio.sleep(timeout_s)
            raise NoAnswer(f"no answer at {address}")
        if any(a not in self.mapped for a in range(address, address + count)):
            raise PermanentDeviceError(f"refused {address}", exception_code=2)
        return list(range(address, address + count))


class FakeGateway:
    """Hands out its one link; `waiting` is how many other jobs the test says wait for it."""

    def __init__(self, link: FakeLink, waiting: int = 0) -> None:
        self.link = link
        self.waiting = waiting
        self.settings = Gateway()

        self.hooks: set[Callable[[], None]] = set()

    def configure(self, settings: Gateway) -> None:
        self.settings = settings

    @contextlib.contextmanager
    def on_wait(self, hook: Callable[[], None]) -> Iterator[None]:
        self.hooks.add(hook)
        try:
            yield
        finally:
            self.hooks.discard(hook)

    def someone_waits(self) -> None:
        self.waiting += 1
        for hook in list(self.hooks):
            hook()

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[FakeLink]:
        self.link.held = True
        try:
            yield self.link
        finally:
            self.link.held = False


def device(link: FakeLink, waiting: int = 0) -> Device:
    key = (METER.host, METER.port, METER.unit_id)
    gateway: Any = FakeGateway(link, waiting)
    load = GatewayLoad(METER.host, METER.port)
    return Device(key, gateway, Health(OfflinePolicy(3, 60)), Holes(), load)


def read(the_job: Job, dev: Device, attempts: int) -> Reading:
    reading = asyncio.run(read_job(the_job, dev, attempts=attempts))
    assert reading is not None
    return reading


def job(registers: tuple[Register, ...], gap: int = 50) -> Job:
    tick_ms = int(time.time() * 1000)
    return Job(METER, tick_ms, tick_ms + 10_000, Plan.build(registers, ReadLimits(max_gap=gap)))


def regs(*addresses: int, fc: int = 3) -> tuple[Register, ...]:
    return tuple(Register(f"r{a}", a, fc, DataType.UINT16) for a in addresses)


def test_every_planned_request_is_read_and_decoded() -> None:
    link = FakeLink(set(range(300)))
    reading = read(job(regs(0, 1, 200), gap=10), device(link), 3)
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
    first = read(the_job, dev, 3)
    second = read(the_job, dev, 3)
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
    reading = read(job(regs(0, 100, 200), gap=0), device(link), 1)
    assert reading.fields == {"r0": 0.0}
    assert reading.errors == {"r100": "no answer at 100", "r200": "no answer at 100"}
    assert (reading.status.up, reading.status.error_code) == (True, "timeout")
    assert reading.status.requests == 2


def test_a_device_that_never_answers_is_down() -> None:
    link = FakeLink(set(range(10)), dead_from=1)
    reading = read(job(regs(0)), device(link), 2)
    assert reading.fields == {}
    assert (reading.status.up, reading.status.error_code, reading.status.requests) == (
        False,
        "timeout",
        2,
    )


def test_an_exception_answer_loses_only_its_request() -> None:
    link = FakeLink({0, 200})
    reading = read(job(regs(0, 100, 200), gap=0), device(link), 3)
    assert reading.fields == {"r0": 0.0, "r200": 200.0}
    assert reading.errors == {"r100": "refused 100"}
    assert (reading.status.up, reading.status.error_code) == (True, "modbus_exception_2")


class GatewaySays(FakeLink):
    """Every request answered with the gateway's (or the device's) exception `code`."""

    def __init__(self, code: int) -> None:
        super().__init__(set())
        self.code = code

    async def read(
        self, function_code: int, address: int, count: int, unit_id: int, *, timeout_s: float
    ) -> list[int]:
        self.requests.append((function_code, address, count))
        if self.code in (10, 11):
            raise NoAnswer(f"exception {self.code}", exception_code=self.code)
        raise BusyAnswer(f"exception {self.code}", exception_code=self.code)


@pytest.mark.parametrize(
    ("code", "up"),
    [(10, False), (11, False), (5, True), (6, True)],
)
def test_gateway_exceptions_10_and_11_mean_the_unit_did_not_answer(code: int, up: bool) -> None:
    dev = device(GatewaySays(code))
    reading = read(job(regs(0)), dev, 1)
    assert (reading.status.up, reading.status.error_code) == (up, f"modbus_exception_{code}")
    assert dev.health.silent is not up


def test_a_silent_unit_gets_one_short_attempt_while_others_wait_for_its_gateway() -> None:
    link = FakeLink(set(range(10)), dead_from=1)
    alone = device(link)
    read(job(regs(0)), alone, 3)
    assert alone.health.silent
    # nobody waits: every attempt, each with the full timeout
    read(job(regs(0)), alone, 3)
    assert link.timeouts == [1.0] * 6

    link = FakeLink(set(range(10)), dead_from=1)
    crowded = device(link, waiting=2)
    read(job(regs(0)), crowded, 3)
    # not known silent yet: the first attempt has the full timeout, and then it is silent
    assert link.timeouts == [1.0]
    reading = read(job(regs(0)), crowded, 3)
    assert link.timeouts == [1.0, 1.0 * SILENT_TIMEOUT_SHARE]
    assert (reading.status.up, reading.status.error_code, reading.status.requests) == (
        False,
        "timeout",
        1,
    )


def test_a_unit_that_answers_again_is_no_longer_silent() -> None:
    link = FakeLink(set(range(10)), dead_from=1)
    dev = device(link, waiting=1)
    read(job(regs(0)), dev, 3)
    assert dev.health.silent
    link.dead_from = None
    reading = read(job(regs(0)), dev, 3)
    assert reading.status.up and not dev.health.silent
    assert link.timeouts == [1.0, 0.5]


def test_a_job_that_got_its_gateway_past_half_a_tick_is_not_read() -> None:
    link = FakeLink(set(range(10)))
    dev = device(link)
    tick_ms = int(time.time() * 1000) - 5_001
    late = Job(METER, tick_ms, tick_ms + 10_000, Plan.build(regs(0)))
    assert asyncio.run(read_job(late, dev, attempts=3)) is None
    assert link.requests == []
    # half a tick minus a second: on time however slowly this test runs
    on_time_ms = int(time.time() * 1000) - 4_000
    on_time = Job(METER, on_time_ms, on_time_ms + 10_000, Plan.build(regs(0)))
    assert asyncio.run(read_job(on_time, dev, attempts=3)) is not None


def test_the_gateway_load_counts_meters_requests_and_busy_time() -> None:
    link = FakeLink({0, 1})
    dev = device(link)
    the_job = job(regs(0, 2, 3))
    read(the_job, dev, 3)
    read(replace(the_job, meter=replace(METER, id=5)), dev, 3)
    dev.load.late(the_job)
    over_ms = the_job.deadline_ms + REPORT_AFTER_MS
    [(status, meter_ids)] = dev.load.due(over_ms)
    assert meter_ids == {4, 5}
    assert (status.meters, status.requests, status.late, status.tick_ms) == (
        2,
        6,
        1,
        the_job.tick_ms,
    )
    assert status.busy_ms >= 0
    assert dev.load.due(over_ms) == []  # reported once


def test_a_silent_units_request_is_cut_short_when_others_start_waiting() -> None:
    link = FakeLink(set(range(10)), dead_from=1, waits_out_timeouts=True)
    dev = device(link)
    dev.health.silent = True  # it did not answer last tick; nobody waits yet
    gateway: Any = dev.gateway

    async def tick() -> tuple[Reading | None, float]:
        started = time.monotonic()
        reading = asyncio.create_task(read_job(job(regs(0)), dev, attempts=3))
        await asyncio.sleep(0.1)
        gateway.someone_waits()  # a neighbour's job arrives
        return await reading, time.monotonic() - started

    reading, took_s = asyncio.run(tick())
    assert reading is not None
    assert link.timeouts == [1.0]  # sent with the full timeout, as nobody waited then
    assert 0.5 <= took_s < 0.9  # cut to half of it once someone did; and not retried
    assert (reading.status.up, reading.status.error_code, reading.status.requests) == (
        False,
        "timeout",
        1,
    )
    assert reading.status.error.endswith("no answer within 0.5 s (silent, and others wait)")
    assert link.closed == 1  # a late answer must not be taken for the next request's
    assert gateway.hooks == set()
