"""The worker against a real RabbitMQ and the simulator: readings, failures, poison jobs."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from msgspec.structs import replace

from broker import READINGS, Broker, dead_letter_queue, job_queue
from devservices.net import free_port, free_port_run, port_open, wait_for
from devservices.processes import Processes
from emm.messages import GatewayStatus, Job, Meter, Reading, decode_result
from emm.plan import Plan
from emm.planner import ReadLimits
from emm.registers import DataType, Register
from emm.settings import WorkerSettings
from scheduler.app import publish_markers
from simulator.model import MeterSpec, expected
from tests.integration.amqp_util import depth, drain, jobs_ready, publish, shard_queue
from worker.app import Worker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

STEP_S = 10
VALUE = Register("test_measurement", 0, 3, DataType.INT16, unit="test_u")


def current_tick_ms(read_within_s: float = 4.0) -> int:
    """The simulator step the next few seconds fall in (waiting out a step change if needed).

    The simulator's values change half-way between steps; reads that start now and take up to
    `read_within_s` must all see the same step.
    """
    phase = time.time() % STEP_S
    if STEP_S / 2 - read_within_s <= phase < STEP_S / 2:
        time.sleep(STEP_S / 2 - phase + 0.05)
    return round(time.time() / STEP_S) * STEP_S * 1000


def publish_jobs(url: str, jobs: list[Job], message_ids: list[str] | None = None) -> None:
    """Put `jobs` in their gateways' shard queues, as the scheduler routes them."""
    ids = message_ids or [j.job_id for j in jobs]
    for j, message_id in zip(jobs, ids, strict=True):
        publish(url, shard_queue(j.meter), [j.encode()], [message_id])


def job(meter: Meter, registers: tuple[Register, ...], tick_ms: int, gap: int = 50) -> Job:
    return Job(
        meter=meter,
        tick_ms=tick_ms,
        deadline_ms=tick_ms + 30_000,
        plan=Plan.build(registers, ReadLimits(max_gap=gap)),
    )


async def run_worker(settings: WorkerSettings, amqp_url: str, expect: int, timeout_s: float):
    """Run a worker until `expect` readings are queued (or the timeout), then stop it."""
    stop = asyncio.Event()
    worker = Worker(settings)
    task = asyncio.create_task(worker.run(stop))
    while not worker.broker.connected:  # the queues are declared
        await asyncio.sleep(0.05)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        ready, _consumers = await asyncio.to_thread(depth, amqp_url, READINGS)
        if ready >= expect:
            break
    stop.set()
    await asyncio.wait_for(task, 20)


@pytest.fixture
def simulator(processes: Processes) -> int:
    port = free_port()
    env = {
        "EMM_SIMULATOR_HOST": "127.0.0.1",
        "EMM_SIMULATOR_PORT": str(port),
        "EMM_SIMULATOR_STEP_S": str(STEP_S),
    }
    processes.start("simulator", ["simulator"], env)
    wait_for(lambda: port_open("127.0.0.1", port), 15)
    return port


def test_readings_failures_and_poison(
    amqp_url: str, simulator: int, caplog: pytest.LogCaptureFixture
) -> None:
    tick_ms = current_tick_ms()
    closed_port = free_port()
    good = Meter(1, "127.0.0.1", simulator, 0, "virtual_modbustcp", "good")
    dead = Meter(2, "127.0.0.1", closed_port, 0, "virtual_modbustcp", "dead")
    holed = Meter(3, "127.0.0.1", simulator, 0, "virtual_modbustcp", "holed")
    hole = Register("notThere", 5, 3, DataType.INT16)
    jobs = [
        job(good, (VALUE,), tick_ms),
        job(dead, (VALUE,), tick_ms),
        job(holed, (VALUE, hole), tick_ms, gap=0),
    ]
    poison = b'{"v": 1, "kind": "job", "meter": "not a meter"}'
    publish_jobs(amqp_url, jobs)
    poisoned = job_queue(0)
    publish(amqp_url, poisoned, [poison], message_ids=["poison-1"])

    settings = WorkerSettings(amqp_url=amqp_url, read_timeout_s=0.5, connect_timeout_s=0.5)
    with caplog.at_level(logging.WARNING):
        asyncio.run(run_worker(settings, amqp_url, expect=3, timeout_s=30))

    readings = {r.meter.id: r for r in (Reading.decode(g.body) for g in drain(amqp_url, READINGS))}
    assert sorted(readings) == [1, 2, 3]
    value = expected(0, tick_ms, STEP_S)["test_measurement"]

    ok = readings[1]
    assert (ok.tick_ms, ok.fields, ok.errors, ok.missing) == (
        tick_ms,
        {"test_measurement": value},
        {},
        (),
    )
    assert (ok.status.up, ok.status.error_code, ok.status.requests) == (True, "", 1)

    down = readings[2]
    assert down.fields == {}
    assert (down.status.up, down.status.error_code) == (False, "unreachable")
    assert down.errors == {"test_measurement": f"cannot connect to 127.0.0.1:{closed_port}"}

    partial = readings[3]
    assert partial.fields == {"test_measurement": value}
    assert (partial.status.up, partial.status.error_code) == (True, "modbus_exception_2")
    assert partial.errors == {
        "notThere": f"127.0.0.1:{simulator} unit 0: FC3 read of 1 at 5: "
        "Modbus exception 2 (ILLEGAL DATA ADDRESS)"
    }

    # Dead-lettered by RabbitMQ (nack without requeue), original body, the reason logged once.
    dead_letters = drain(amqp_url, dead_letter_queue(poisoned))
    assert [d.body for d in dead_letters] == [poison]
    assert dead_letters[0].properties.message_id == "poison-1"
    assert dead_letters[0].headers["x-first-death-reason"] == "rejected"
    assert dead_letters[0].headers["x-first-death-queue"] == poisoned
    assert [d["reason"] for d in dead_letters[0].headers["x-death"]] == ["rejected"]
    reasons = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.ERROR and "dead-lettered" in r.getMessage()
    ]
    assert len(reasons) == 1
    assert reasons[0].startswith(f"{poisoned}: message poison-1 dead-lettered to emm.jobs.dead: ")
    assert "job is malformed" in reasons[0]
    assert jobs_ready(amqp_url) == 0  # every job acked, none requeued

    # One warning line per failing meter, naming the meter and its registers.
    lines = [r.getMessage() for r in caplog.records if r.name == "worker.consumer"]
    assert len([m for m in lines if m.startswith("meter 2 ")]) == 1
    assert len([m for m in lines if m.startswith("meter 3 ")]) == 1
    assert any("registers not read: notThere" in m for m in lines)
    assert not [m for m in lines if m.startswith("meter 1 ")]


def test_a_job_past_its_tick_is_acked_without_reading(amqp_url: str, simulator: int) -> None:
    meter = Meter(1, "127.0.0.1", simulator, 0, "virtual_modbustcp")
    stale = Job(meter, 1_000, 2_000, Plan.build((VALUE,)))
    publish_jobs(amqp_url, [stale])
    settings = WorkerSettings(amqp_url=amqp_url)
    asyncio.run(run_worker(settings, amqp_url, expect=1, timeout_s=3))
    # no reading; only its gateway's status, which counts the job as dropped late
    [got] = drain(amqp_url, READINGS)
    assert decode_result(got.body) == GatewayStatus(
        host="127.0.0.1", port=simulator, tick_ms=1_000, period_ms=1_000, late=1
    )
    assert got.properties.message_id == f"127.0.0.1:{simulator}@1000"
    assert jobs_ready(amqp_url) == 0


def test_job_bodies_are_plain_json_a_person_can_read() -> None:
    meter = Meter(7, "10.0.0.7", 502, 1, "sdm630", "pump")
    body = job(meter, (VALUE,), 1_700_000_000_000).encode()
    data = json.loads(body)
    assert data["meter"] == {
        "id": 7,
        "host": "10.0.0.7",
        "port": 502,
        "unit_id": 1,
        "type": "sdm630",
        "description": "pump",
    }
    assert data["plan"]["requests"] == [[3, 0, 1]]
    # one row per register: name, address, fc, unit, type (order ABCD and no scale left out)
    assert data["plan"]["registers"] == [["test_measurement", 0, 3, "test_u", "int16"]]


def test_a_merged_read_across_a_hole_is_split_once_and_remembered(
    amqp_url: str, simulator: int, caplog: pytest.LogCaptureFixture
) -> None:
    meter = Meter(5, "127.0.0.1", simulator, 0, "virtual_modbustcp")
    # The virtual meter maps only address 0: one merged request 0..3 fails with exception 2.
    registers = (
        VALUE,
        Register("gapA", 2, 3, DataType.INT16),
        Register("gapB", 3, 3, DataType.INT16),
    )
    tick_ms = current_tick_ms()
    first = job(meter, registers, tick_ms)
    assert [(r.address, r.count) for r in first.plan.requests] == [(0, 4)]
    # The same device under another meter id: a job of its own, the same learned split.
    second = replace(first, meter=replace(meter, id=6))
    settings = WorkerSettings(amqp_url=amqp_url)

    async def two_ticks() -> None:
        stop = asyncio.Event()
        worker = Worker(settings)
        task = asyncio.create_task(worker.run(stop))
        while not worker.broker.connected:
            await asyncio.sleep(0.05)
        for n, body in ((1, first.encode()), (2, second.encode())):
            await asyncio.to_thread(publish, amqp_url, shard_queue(meter), [body])
            for _ in range(100):
                await asyncio.sleep(0.1)
                if (await asyncio.to_thread(depth, amqp_url, READINGS))[0] >= n:
                    break
        stop.set()
        await asyncio.wait_for(task, 20)

    with caplog.at_level(logging.WARNING):
        asyncio.run(two_ticks())
    readings = [Reading.decode(g.body) for g in drain(amqp_url, READINGS)]
    assert len(readings) == 2
    value = expected(0, tick_ms, STEP_S)["test_measurement"]
    refused = {
        name: f"127.0.0.1:{simulator} unit 0: FC3 read of 1 at {address}: "
        "Modbus exception 2 (ILLEGAL DATA ADDRESS)"
        for name, address in (("gapA", 2), ("gapB", 3))
    }
    for r in readings:
        assert r.fields == {"test_measurement": value}
        assert r.errors == refused
        assert (r.status.up, r.status.error_code) == (True, "modbus_exception_2")
    # First tick: the merged read, then halves [0] and [2, 3], then 2 and 3 alone.
    assert [r.status.requests for r in readings] == [5, 1]
    lines = [rec.getMessage() for rec in caplog.records if rec.name.startswith("worker")]
    assert [m for m in lines if "crosses a hole" in m] == [
        f"meter 5 (127.0.0.1:{simulator} unit 0): FC3 read of 4 at 0 crosses a hole; "
        "split into 1 request(s); never readable: gapA, gapB"
    ]
    assert len([m for m in lines if m.startswith("meter 5 (virtual_modbustcp")]) == 1


def test_slow_devices_are_read_concurrently_and_workers_share_the_gateways(
    amqp_url: str, processes: Processes
) -> None:
    meters, latency_ms = 20, 300
    base = free_port_run(meters)
    processes.start(
        "simulator",
        [
            "simulator",
            "--profile",
            "sdm630",
            "--meters",
            str(meters),
            "--port-per-meter",
            "--port",
            str(base),
            "--host",
            "127.0.0.1",
            "--latency-ms",
            str(latency_ms),
        ],
        {"EMM_SIMULATOR_STEP_S": str(STEP_S)},
    )
    wait_for(lambda: all(port_open("127.0.0.1", base + i) for i in range(meters)), 20)
    spec = MeterSpec.of_type("sdm630", step_s=STEP_S)
    profile = spec.profile
    assert profile is not None
    sdm630 = Plan.build(profile.registers, profile.limits)
    assert len(sdm630.requests) == 4
    tick_ms = current_tick_ms()
    jobs = [
        Job(
            Meter(i + 1, "127.0.0.1", base + i, 1, "sdm630"),
            tick_ms,
            tick_ms + 30_000,
            sdm630,
        )
        for i in range(meters)
    ]
    settings = WorkerSettings(amqp_url=amqp_url, read_timeout_s=2.0)
    elapsed: list[float] = []
    workers = [Worker(settings), Worker(settings)]

    async def go() -> None:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(w.run(stop)) for w in workers]
        while not all(w.broker.connected for w in workers):  # both consuming
            await asyncio.sleep(0.05)
        # a tick's markers: the worker that came first hands half the busy shards over
        scheduler = Broker(amqp_url)
        await scheduler.connect(retry_forever=False)
        await publish_markers(scheduler, tick_ms, 30_000, jobs)
        await scheduler.close()
        await asyncio.sleep(1.5)
        owned = [set(w.shards.owned()) for w in workers]
        assert not owned[0] & owned[1]
        started = time.monotonic()
        await asyncio.to_thread(publish_jobs, amqp_url, jobs)
        while (await asyncio.to_thread(depth, amqp_url, READINGS))[0] < meters:
            await asyncio.sleep(0.05)
            assert time.monotonic() - started < 30
        elapsed.append(time.monotonic() - started)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)

    asyncio.run(go())
    readings = [Reading.decode(g.body) for g in drain(amqp_url, READINGS)]
    assert sorted(r.meter.id for r in readings) == list(range(1, meters + 1))
    for r in readings:
        want = expected(
            MeterSpec.of_type("sdm630", seed=r.meter.port - base, step_s=STEP_S), tick_ms
        )
        assert r.fields == want
        assert r.status.requests == 4
        assert r.status.latency_ms >= 4 * latency_ms
    # One after the other this would take 20 x 4 x 0.3 s = 24 s.
    assert elapsed[0] < 8, elapsed
    handled = [w.consumer.handled for w in workers]
    assert sorted(handled)[0] > 0, handled
    assert sum(handled) == meters
    # each gateway read by one worker only
    for w in workers:
        gateways = {key[:2] for key in w.devices._devices}
        for other in workers:
            if other is not w:
                assert not gateways & {key[:2] for key in other.devices._devices}
