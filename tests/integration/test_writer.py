"""The writer against a real RabbitMQ and InfluxDB 1.x / VictoriaMetrics."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from broker import READINGS
from devservices.influx import Service, start_influxdb_v1
from devservices.net import free_port
from devservices.readers import InfluxQL, VictoriaMetrics
from emm.messages import Meter, Reading, Status
from emm.settings import WriterSettings
from tests.integration.amqp_util import depth, drain, publish
from writer.app import Writer
from writer.influx import make_sink

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TICK = 1_800_000_000_000


def reading(meter_id: int, tick_ms: int = TICK, **fields: float) -> Reading:
    meter = Meter(meter_id, "127.0.0.1", 502, 1, "sdm630", f"writer test {meter_id}")
    return Reading(meter, tick_ms, dict(fields), Status(up=True, latency_ms=1.5, requests=1))


class CountingSink:
    """Wraps the real sink to record the size of every write."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.writes: list[int] = []

    def write(self, lines: list[str]) -> None:
        self.inner.write(lines)
        self.writes.append(len(lines))

    def close(self) -> None:
        self.inner.close()


async def _run(writer: Writer, done: Callable[[], bool], timeout_s: float) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not task.done():
        await asyncio.sleep(0.2)
        if await asyncio.to_thread(done):
            break
    stop.set()
    await asyncio.wait_for(task, 20)


def run_writer(writer: Writer, done: Callable[[], bool], timeout_s: float = 20) -> None:
    asyncio.run(_run(writer, done, timeout_s))


def v1_settings(amqp_url: str, influx: InfluxQL, **kw) -> WriterSettings:
    return WriterSettings(
        amqp_url=amqp_url,
        influx_url=influx.url,
        influx_api="v1",
        influx_bucket=influx.database,
        **kw,
    )


def test_v1_points_exact_and_a_duplicate_leaves_one(amqp_url: str, influx_v1: InfluxQL) -> None:
    a = reading(1, voltageL1=230.1, activePower=-12.5)
    b = reading(2, TICK + 10_000, voltageL1=229.9)
    down = Reading(
        a.meter,
        TICK + 10_000,
        {},
        Status(False, "timeout", "no answer", 1000.0, 3),
        errors={"voltageL1": "no answer", "activePower": "no answer"},
    )
    publish(amqp_url, READINGS, [a.encode(), b.encode(), a.encode(), down.encode()])
    writer = Writer(v1_settings(amqp_url, influx_v1, flush_interval_ms=200))
    run_writer(writer, lambda: writer.written >= 4)

    assert influx_v1.query("SELECT * FROM energy") == [
        {
            "time": TICK,
            "activePower": -12.5,
            "description": "writer test 1",
            "meter_id": "1",
            "type": "sdm630",
            "voltageL1": 230.1,
        },
        {
            "time": TICK + 10_000,
            "activePower": None,
            "description": "writer test 2",
            "meter_id": "2",
            "type": "sdm630",
            "voltageL1": 229.9,
        },
    ]
    status = influx_v1.query(
        "SELECT up, error_code, latency_ms, requests, errors FROM meter_status WHERE meter_id = '1'"
    )
    assert status == [
        {"time": TICK, "up": True, "error_code": "", "latency_ms": 1.5, "requests": 1, "errors": 0},
        {
            "time": TICK + 10_000,
            "up": False,
            "error_code": "timeout",
            "latency_ms": 1000.0,
            "requests": 3,
            "errors": 2,
        },
    ]
    assert depth(amqp_url, READINGS)[0] == 0


def test_v2_write_to_victoriametrics(amqp_url: str, victoria: VictoriaMetrics) -> None:
    meter_id = int(time.time()) % 1_000_000 + 1_000  # series of its own in the shared server
    tick_ms = (int(time.time()) - 3600) * 1000  # VictoriaMetrics refuses far-future samples
    r = reading(meter_id, tick_ms, voltageL1=231.25)
    publish(amqp_url, READINGS, [r.encode(), r.encode()])
    writer = Writer(
        WriterSettings(
            amqp_url=amqp_url,
            influx_url=victoria.url,
            influx_bucket="energy",
            influx_org="emm",
            flush_interval_ms=200,
        )
    )
    run_writer(writer, lambda: writer.written >= 2)
    victoria.flush()
    series = victoria.export(
        f'{{__name__="energy_voltageL1",meter_id="{meter_id}"}}', tick_ms - 60_000
    )
    assert [(s["values"], s["timestamps"]) for s in series] == [([231.25], [tick_ms])]
    assert series[0]["metric"] == {
        "__name__": "energy_voltageL1",
        "meter_id": str(meter_id),
        "type": "sdm630",
        "description": f"writer test {meter_id}",
    }


def test_batches_by_count_and_by_time(amqp_url: str, influx_v1: InfluxQL) -> None:
    publish(amqp_url, READINGS, [reading(i, voltageL1=float(i)).encode() for i in range(1, 8)])
    sink = CountingSink(make_sink(v1_settings(amqp_url, influx_v1)))
    writer = Writer(
        v1_settings(amqp_url, influx_v1, batch_size=3, flush_interval_ms=60_000), sink=sink
    )
    seen: list[list[int]] = []

    def two_batches_then_a_pause() -> bool:
        if writer.written < 6:
            return False
        time.sleep(1.0)
        seen.append(list(sink.writes))
        return True

    run_writer(writer, two_batches_then_a_pause, timeout_s=10)
    # Two full batches of 3 readings (2 lines each); the 7th waited for the 60 s timer and
    # was written when the writer stopped.
    assert seen == [[6, 6]]
    assert sink.writes == [6, 6, 2]

    publish(amqp_url, READINGS, [reading(8, voltageL1=8.0).encode()])
    sink2 = CountingSink(make_sink(v1_settings(amqp_url, influx_v1)))
    writer2 = Writer(
        v1_settings(amqp_url, influx_v1, batch_size=100, flush_interval_ms=300), sink=sink2
    )
    started = time.monotonic()
    run_writer(writer2, lambda: writer2.written >= 1, timeout_s=10)
    assert sink2.writes == [2]
    assert time.monotonic() - started < 5
    assert len(influx_v1.query("SELECT voltageL1 FROM energy")) == 8


def test_malformed_and_rejected_readings_are_dead_lettered(
    amqp_url: str, influx_v1: InfluxQL, caplog: pytest.LogCaptureFixture
) -> None:
    # A string field first: a float written later to the same field is a type conflict (400).
    influx_v1.write(f'energy,meter_id=9 oddField="text" {TICK - 1000}')
    bad = reading(9, voltageL1=9.0, oddField=1.0)
    good = [reading(i, voltageL1=float(i)) for i in (1, 2, 3)]
    junk = b"\x00not json"
    publish(
        amqp_url,
        READINGS,
        [good[0].encode(), bad.encode(), junk, good[1].encode(), good[2].encode()],
        message_ids=[
            good[0].reading_id,
            bad.reading_id,
            "junk",
            good[1].reading_id,
            good[2].reading_id,
        ],
    )
    writer = Writer(v1_settings(amqp_url, influx_v1, flush_interval_ms=200))
    with caplog.at_level(logging.ERROR):
        run_writer(writer, lambda: writer.written >= 3 and depth(amqp_url, READINGS)[0] == 0)

    # Dead-lettered by RabbitMQ (nack without requeue): original body and properties.
    dead = drain(amqp_url, f"{READINGS}.dead")
    assert sorted(d.body for d in dead) == sorted([junk, bad.encode()])
    assert {d.body: d.properties.message_id for d in dead} == {
        junk: "junk",
        bad.encode(): bad.reading_id,
    }
    for d in dead:
        assert d.headers["x-first-death-reason"] == "rejected"
        assert d.headers["x-first-death-queue"] == READINGS
        assert [death["reason"] for death in d.headers["x-death"]] == ["rejected"]
    # The reason is in one error line per message, naming the queue and the message id.
    lines = [r.getMessage() for r in caplog.records if "dead-lettered" in r.getMessage()]
    reasons = {
        message_id: [line for line in lines if f" {message_id} dead-lettered" in line]
        for message_id in ("junk", bad.reading_id)
    }
    assert len(lines) == 2
    assert reasons["junk"][0].startswith(f"{READINGS}: message junk dead-lettered to ")
    assert "reading is not valid JSON" in reasons["junk"][0]
    assert "rejected the write (HTTP 400)" in reasons[bad.reading_id][0]
    assert "field type conflict" in reasons[bad.reading_id][0]
    rows = influx_v1.query("SELECT voltageL1 FROM energy WHERE meter_id != '9'")
    assert sorted(r["voltageL1"] for r in rows) == [1.0, 2.0, 3.0]


def test_influxdb_down_keeps_every_reading_until_it_returns(amqp_url: str, tmp_path: Path) -> None:
    port = free_port()
    settings = WriterSettings(
        amqp_url=amqp_url,
        influx_url=f"http://127.0.0.1:{port}",
        influx_api="v1",
        influx_bucket="energy",
        flush_interval_ms=100,
        retry_max_s=1.0,
        write_timeout_s=2,
    )
    readings = [reading(i, voltageL1=float(i)) for i in range(1, 11)]
    publish(amqp_url, READINGS, [r.encode() for r in readings])
    writer = Writer(settings)
    service: list[Service] = []

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(writer.run(stop))
        await asyncio.sleep(4)  # InfluxDB is not there: retries, nothing acked
        assert not task.done()
        assert writer.written == 0
        assert await asyncio.to_thread(depth, amqp_url, READINGS) == (0, 1)  # all unacked
        started = await asyncio.to_thread(start_influxdb_v1, tmp_path / "influx", port)
        service.append(started)
        await asyncio.to_thread(InfluxQL(started.url, "energy").create_database)
        deadline = time.monotonic() + 30
        while writer.written < 10 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        stop.set()
        await asyncio.wait_for(task, 20)

    try:
        asyncio.run(scenario())
        rows = InfluxQL(service[0].url, "energy").query("SELECT voltageL1 FROM energy")
        assert sorted(r["voltageL1"] for r in rows) == [float(i) for i in range(1, 11)]
        assert depth(amqp_url, READINGS)[0] == 0
        assert drain(amqp_url, f"{READINGS}.dead") == []
    finally:
        for s in service:
            s.stop()
