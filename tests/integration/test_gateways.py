"""Gateways as the worker treats them, against a real RabbitMQ, the simulator (or pymodbus's own
RTU-framed server) and InfluxDB: pauses and timeouts per gateway, RTU over TCP, exception 10/11,
jobs dropped while they wait for their gateway, and `gateway_status` points."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable

import pika
import pytest
from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

from broker import READINGS
from devservices.net import free_port, port_open, wait_for
from devservices.processes import Processes
from devservices.readers import InfluxQL
from emm.messages import Gateway, Job, Meter, Reading, decode_result
from emm.plan import Plan
from emm.profiles import shipped_profile
from emm.registers import DataType, Register
from emm.settings import WorkerSettings, WriterSettings
from simulator.model import MeterSpec, expected
from tests.integration.amqp_util import depth, drain, jobs_ready, publish, shard_queue
from tests.integration.tcp_tap import Tap
from worker.app import Worker
from writer.app import Writer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

STEP_S = 10


def sdm630_plan(names: int | None = None) -> Plan:
    """The sdm630's plan (4 requests), or one of its first `names` registers only."""
    profile = shipped_profile("sdm630")
    assert profile is not None
    registers = profile.registers if names is None else profile.registers[:names]
    return Plan.build(registers, profile.limits)


def start_simulator(processes: Processes, meters: int, *faults: str) -> int:
    port = free_port()
    processes.start(
        "simulator",
        [
            "simulator",
            "--profile",
            "sdm630",
            "--meters",
            str(meters),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *faults,
        ],
        {"EMM_SIMULATOR_STEP_S": str(STEP_S)},
    )
    wait_for(lambda: port_open("127.0.0.1", port), 20)
    return port


def steady_tick_ms(within_s: float) -> int:
    """The simulator step the next `within_s` seconds fall in (waiting out a change)."""
    phase = time.time() % STEP_S
    if STEP_S / 2 - within_s <= phase < STEP_S / 2:
        time.sleep(STEP_S / 2 - phase + 0.05)
    return round(time.time() / STEP_S) * STEP_S * 1000


async def until(done: Callable[[], Awaitable[bool]], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not await done():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


def consuming(amqp_url: str, port: int) -> Callable[[], Awaitable[bool]]:
    """Whether a worker consumes the shard queue of gateway 127.0.0.1:`port` (a worker that
    has just started declares and consumes 64 queues first: a tick set before it would be
    half over before its first job arrives)."""
    queue = shard_queue(Meter(0, "127.0.0.1", port, 1, "sdm630"))

    async def check() -> bool:
        try:
            return (await asyncio.to_thread(depth, amqp_url, queue))[1] >= 1
        except pika.exceptions.ChannelClosedByBroker:
            return False  # not declared yet

    return check


def readings_ready(amqp_url: str, n: int) -> Callable[[], Awaitable[bool]]:
    publish(amqp_url, READINGS, [])  # declared, whether the worker has come that far or not

    async def check() -> bool:
        return (await asyncio.to_thread(depth, amqp_url, READINGS))[0] >= n

    return check


async def publish_jobs(amqp_url: str, jobs: list[Job]) -> None:
    # each to its gateway's shard queue, as the scheduler routes it
    for job in jobs:
        await asyncio.to_thread(publish, amqp_url, shard_queue(job.meter), [job.encode()])


def readings(amqp_url: str) -> dict[int, Reading]:
    out = {}
    for got in drain(amqp_url, READINGS):
        message = decode_result(got.body)
        assert isinstance(message, Reading), message
        out[message.meter.id] = message
    return out


def test_pauses_and_timeout_hold_per_gateway(amqp_url: str, processes: Processes) -> None:
    latency_s = 0.25
    port = start_simulator(processes, 2, "--latency-ms", str(latency_s * 1000))
    tick_ms = steady_tick_ms(within_s=4)
    paced_gateway = Gateway(pause_after_connect_ms=300, pause_between_requests_ms=200)
    settings = WorkerSettings(amqp_url=amqp_url, read_timeout_s=2.0, read_attempts=1)
    tap = Tap("127.0.0.1", port)

    async def go() -> None:
        await tap.start()
        stop = asyncio.Event()
        task = asyncio.create_task(Worker(settings).run(stop))
        # unit 1 through the tap, paced; unit 2 straight, with a timeout below its latency
        paced = Job(
            Meter(1, "127.0.0.1", tap.port, 1, "sdm630"),
            tick_ms,
            tick_ms + 30_000,
            sdm630_plan(),
            paced_gateway,
        )
        strict = Job(
            Meter(2, "127.0.0.1", port, 2, "sdm630"),
            tick_ms,
            tick_ms + 30_000,
            sdm630_plan(names=1),
            Gateway(request_timeout_ms=100),
        )
        await publish_jobs(amqp_url, [paced, strict])
        await until(readings_ready(amqp_url, 2), 20)
        stop.set()
        await asyncio.wait_for(task, 20)
        await tap.close()

    asyncio.run(go())
    got = readings(amqp_url)
    paced_reading = got[1]
    spec = MeterSpec.of_type("sdm630", seed=0, step_s=STEP_S)
    assert paced_reading.fields == expected(spec, tick_ms)
    assert paced_reading.status.requests == 4
    [connection] = tap.connections
    arrivals = connection.requests
    assert len(arrivals) == 4
    assert arrivals[0] - connection.opened >= 0.3
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    # each request waits for the previous answer (the latency), then the pause
    assert min(gaps) >= latency_s + 0.2 - 0.005, gaps
    assert paced_reading.status.latency_ms >= (0.3 + 4 * latency_s + 3 * 0.2) * 1000

    strict_reading = got[2]
    assert (strict_reading.status.up, strict_reading.status.error_code) == (False, "timeout")
    assert strict_reading.status.error.endswith("no answer within 0.1 s")


def test_rtu_framing_over_tcp_end_to_end(amqp_url: str) -> None:
    port = free_port()
    # holding registers 0..2: an int16 1234 and the float32 12.5 (0x41480000)
    device = SimDevice(
        id=1, simdata=[SimData(0, values=[1234, 0x4148, 0x0000], datatype=SimType.REGISTERS)]
    )
    plan = Plan.build((Register("a", 0, 3, DataType.INT16), Register("b", 1, 3, DataType.FLOAT32)))
    tick_ms = int(time.time() * 1000)
    settings = WorkerSettings(amqp_url=amqp_url, read_timeout_s=0.5, read_attempts=1)

    def job_for(meter_id: int, gateway: Gateway) -> Job:
        meter = Meter(meter_id, "127.0.0.1", port, 1, "rtu")
        return Job(meter, tick_ms, tick_ms + 30_000, plan, gateway)

    async def go() -> None:
        server = ModbusTcpServer(device, framer=FramerType.RTU, address=("127.0.0.1", port))
        await server.serve_forever(background=True)
        stop = asyncio.Event()
        task = asyncio.create_task(Worker(settings).run(stop))
        await publish_jobs(amqp_url, [job_for(1, Gateway(framing="rtu-over-tcp"))])
        await until(readings_ready(amqp_url, 1), 20)
        # the same server spoken to as Modbus TCP does not answer: the framing is what reads
        await publish_jobs(amqp_url, [job_for(2, Gateway())])
        await until(readings_ready(amqp_url, 2), 20)
        stop.set()
        await asyncio.wait_for(task, 20)
        await server.shutdown()

    asyncio.run(go())
    got = readings(amqp_url)
    assert got[1].fields == {"a": 1234.0, "b": 12.5}
    assert (got[1].status.up, got[1].status.error_code, got[1].status.requests) == (True, "", 1)
    assert got[2].fields == {}
    assert (got[2].status.up, got[2].status.error_code) == (False, "timeout")


@pytest.mark.parametrize("code", [10, 11])
def test_gateway_exception_10_or_11_is_a_unit_that_did_not_answer(
    amqp_url: str, processes: Processes, code: int
) -> None:
    port = start_simulator(processes, 2, "--exception", str(code), "--fault-meters", "0")
    settings = WorkerSettings(
        amqp_url=amqp_url, read_timeout_s=0.5, read_attempts=1, offline_after_ticks=2
    )
    period_ms = 10_000
    first_tick_ms = int(time.time() * 1000)
    plan = sdm630_plan(names=1)
    statuses: dict[int, list[tuple[bool, str]]] = {1: [], 2: []}

    async def go() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(Worker(settings).run(stop))
        for n in range(3):  # one tick after the other: each tick's health counts for the next
            tick_ms = first_tick_ms + n * period_ms
            jobs = [
                Job(
                    Meter(unit, "127.0.0.1", port, unit, "sdm630"),
                    tick_ms,
                    tick_ms + period_ms,
                    plan,
                )
                for unit in (1, 2)
            ]
            await publish_jobs(amqp_url, jobs)
            await until(readings_ready(amqp_url, 2), 20)
            for meter_id, reading in (await asyncio.to_thread(readings, amqp_url)).items():
                statuses[meter_id].append((reading.status.up, reading.status.error_code))
        stop.set()
        await asyncio.wait_for(task, 20)

    asyncio.run(go())
    failed = (False, f"modbus_exception_{code}")
    assert statuses[1] == [failed, failed, (False, "offline")]
    assert statuses[2] == [(True, "")] * 3


def test_jobs_that_wait_past_half_a_tick_are_dropped_and_the_gateway_status_counts_them(
    amqp_url: str, processes: Processes, influx_v1: InfluxQL, caplog: pytest.LogCaptureFixture
) -> None:
    latency_ms, period_ms = 1200, 2000
    port = start_simulator(processes, 3, "--latency-ms", str(latency_ms))
    plan = sdm630_plan(names=1)
    worker = Worker(WorkerSettings(amqp_url=amqp_url, read_timeout_s=2.0, read_attempts=1))
    writer = Writer(
        WriterSettings(
            amqp_url=amqp_url,
            influx_url=influx_v1.url,
            influx_api="v1",
            influx_bucket=influx_v1.database,
            flush_interval_ms=100,
        )
    )
    query = "SELECT * FROM gateway_status"
    at: dict[str, int] = {}

    async def go() -> None:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(s.run(stop)) for s in (worker, writer)]
        await until(consuming(amqp_url, port), 20)
        tick_ms = at["tick_ms"] = int(time.time() * 1000)
        # The first job holds the gateway's one connection 1.2 s: the others get it past 1 s.
        jobs = [
            Job(Meter(unit, "127.0.0.1", port, unit, "sdm630"), tick_ms, tick_ms + period_ms, plan)
            for unit in (1, 2, 3)
        ]
        await publish_jobs(amqp_url, jobs)

        async def stored() -> bool:
            return bool(await asyncio.to_thread(influx_v1.query, query))

        await until(stored, 20)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)

    with caplog.at_level(logging.WARNING):
        asyncio.run(go())
    tick_ms = at["tick_ms"]
    [point] = influx_v1.query(query)
    busy_ms = point.pop("busy_ms")
    utilisation = point.pop("utilisation")
    assert point == {
        "time": tick_ms,
        "gateway": f"127.0.0.1:{port}",
        "meters": 1,
        "requests": 1,
        "late": 2,
        "connections": 1,
        "period_ms": period_ms,
    }
    assert latency_ms <= busy_ms < period_ms
    assert utilisation == pytest.approx(busy_ms / period_ms, abs=1e-4)
    assert worker.consumer.late == 2  # counted as jobs that came late are
    assert worker.consumer.handled == 1
    assert jobs_ready(amqp_url) == 0  # the late ones acked unread
    [reading] = influx_v1.query("SELECT up FROM meter_status")
    assert reading == {"time": tick_ms, "up": True}
    late_lines = [r.getMessage() for r in caplog.records if "past its tick" in r.getMessage()]
    assert len(late_lines) == 1  # the first of the tick; the rest are summed up


def test_a_gateway_gets_its_max_connections_and_no_more(
    amqp_url: str, processes: Processes
) -> None:
    port = start_simulator(processes, 6, "--latency-ms", "200")
    tap = Tap("127.0.0.1", port)
    tick_ms = steady_tick_ms(within_s=4)
    settings = WorkerSettings(amqp_url=amqp_url, read_timeout_s=2.0)

    async def go() -> None:
        await tap.start()
        stop = asyncio.Event()
        task = asyncio.create_task(Worker(settings).run(stop))
        jobs = [
            Job(
                Meter(unit, "127.0.0.1", tap.port, unit, "sdm630"),
                tick_ms,
                tick_ms + 30_000,
                sdm630_plan(names=1),
                Gateway(max_connections=2),
            )
            for unit in range(1, 7)
        ]
        await publish_jobs(amqp_url, jobs)
        await until(readings_ready(amqp_url, 6), 20)
        stop.set()
        await asyncio.wait_for(task, 20)
        await tap.close()

    asyncio.run(go())
    got = readings(amqp_url)
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    assert all(r.status.up for r in got.values())
    assert (tap.peak, len(tap.connections)) == (2, 2)
    # the six requests shared the two connections
    assert sum(len(c.requests) for c in tap.connections) == 6
    assert min(len(c.requests) for c in tap.connections) >= 1


def test_a_dead_unit_does_not_push_its_neighbours_past_the_tick(
    amqp_url: str, processes: Processes
) -> None:
    # Unit 1 never answers. With 3 attempts of 1 s it would hold the gateway past half the
    # 4 s tick and its neighbours would be dropped as late; once they wait it gets no retry.
    port = start_simulator(processes, 4, "--timeout-rate", "1", "--fault-meters", "0")
    period_ms = 4_000
    settings = WorkerSettings(amqp_url=amqp_url, read_timeout_s=1.0, read_attempts=3)

    async def go() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(Worker(settings).run(stop))
        await until(consuming(amqp_url, port), 20)
        tick_ms = int(time.time() * 1000)
        jobs = [
            Job(
                Meter(unit, "127.0.0.1", port, unit, "sdm630"),
                tick_ms,
                tick_ms + period_ms,
                sdm630_plan(names=1),
            )
            for unit in (1, 2, 3, 4)  # the dead unit first in line
        ]
        await publish_jobs(amqp_url, jobs)
        await until(readings_ready(amqp_url, 4), 20)
        stop.set()
        await asyncio.wait_for(task, 20)

    asyncio.run(go())
    got = readings(amqp_url)
    assert sorted(got) == [1, 2, 3, 4]
    dead = got[1].status
    assert (dead.up, dead.error_code, dead.requests) == (False, "timeout", 1)
    for unit in (2, 3, 4):
        assert (got[unit].status.up, got[unit].status.error_code) == (True, "")
