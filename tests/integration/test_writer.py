"""The writer against a real RabbitMQ and InfluxDB 1.x / VictoriaMetrics."""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest

from broker import READINGS
from devservices.influx import start_influxdb_v1
from devservices.net import Forwarder
from devservices.readers import InfluxQL, VictoriaMetrics
from emm.messages import Meter, Reading, Status
from emm.settings import WriterSettings
from tests.integration.amqp_util import depth, drain, publish
from writer.app import Writer
from writer.influx import make_sink

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

# An hour ago on a whole minute: the writer refuses ticks far from its clock.
TICK = (int(time.time()) // 60 * 60 - 3600) * 1000


def reading(meter_id: int, tick_ms: int = TICK, **fields: float) -> Reading:
    meter = Meter(meter_id, "127.0.0.1", 502, 1, "sdm630", f"writer test {meter_id}")
    return Reading(meter, tick_ms, dict(fields), Status(up=True, latency_ms=1.5, requests=1))


class CountingSink:
    """Wraps the real sink to record the lines and bytes of every write."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.writes: list[int] = []
        self.sizes: list[int] = []

    def write(self, chunks: list[bytes]) -> None:
        self.inner.write(chunks)
        self.writes.append(sum(chunk.count(b"\n") + 1 for chunk in chunks))
        self.sizes.append(len(b"\n".join(chunks)))

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
    # InfluxDB (with its database) behind a port that stays closed until the outage ends
    service = start_influxdb_v1(tmp_path / "influx")
    InfluxQL(service.url, "energy").create_database()
    influx = urllib.parse.urlsplit(service.url)
    forwarder = Forwarder((influx.hostname or "127.0.0.1", influx.port or 8086))
    settings = WriterSettings(
        amqp_url=amqp_url,
        influx_url=f"http://127.0.0.1:{forwarder.port}",
        influx_api="v1",
        influx_bucket="energy",
        flush_interval_ms=100,
        retry_max_s=1.0,
        write_timeout_s=2,
    )
    readings = [reading(i, voltageL1=float(i)) for i in range(1, 11)]
    publish(amqp_url, READINGS, [r.encode() for r in readings])
    writer = Writer(settings)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(writer.run(stop))
        await asyncio.sleep(4)  # InfluxDB is not there: the writer waits, nothing taken
        assert not task.done()
        assert writer.written == 0
        assert await asyncio.to_thread(depth, amqp_url, READINGS) == (10, 0)
        forwarder.open()
        deadline = time.monotonic() + 30
        while writer.written < 10 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        stop.set()
        await asyncio.wait_for(task, 20)

    try:
        asyncio.run(scenario())
        rows = InfluxQL(service.url, "energy").query("SELECT voltageL1 FROM energy")
        assert sorted(r["voltageL1"] for r in rows) == [float(i) for i in range(1, 11)]
        assert depth(amqp_url, READINGS)[0] == 0
        assert drain(amqp_url, f"{READINGS}.dead") == []
    finally:
        forwarder.close()
        service.stop()


def dead_reasons(caplog: pytest.LogCaptureFixture) -> dict[str, str]:
    """message id -> the reason its dead-letter line gives."""
    marker = f" dead-lettered to {READINGS}.dead: "
    out = {}
    for record in caplog.records:
        line = record.getMessage()
        if marker in line:
            head, why = line.split(marker, 1)
            out[head.removeprefix(f"{READINGS}: message ")] = why
    return out


def many_fields(meter_id: int, count: int, tick_ms: int = TICK) -> Reading:
    return reading(meter_id, tick_ms, **{f"value{i}": float(i) for i in range(count)})


def test_413_splits_the_batch_and_a_reading_over_the_limit_goes_alone(
    amqp_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A private InfluxDB taking bodies of at most 8 KB: a batch of 40 readings of 20 fields
    # (about 20 KB) is refused with 413 and must be split; one reading of 1,000 fields is over
    # the limit on its own.
    service = start_influxdb_v1(tmp_path / "influx", max_body_bytes=8192)
    try:
        influx = InfluxQL(service.url, "energy")
        influx.create_database()
        good = [many_fields(i, 20) for i in range(1, 41)]
        huge = many_fields(99, 1000)
        bodies = [r.encode() for r in good[:20]] + [huge.encode()] + [r.encode() for r in good[20:]]
        ids = (
            [r.reading_id for r in good[:20]]
            + [huge.reading_id]
            + [r.reading_id for r in good[20:]]
        )
        publish(amqp_url, READINGS, bodies, message_ids=ids)
        sink = CountingSink(make_sink(v1_settings(amqp_url, influx)))
        writer = Writer(v1_settings(amqp_url, influx, flush_interval_ms=300), sink=sink)
        with caplog.at_level(logging.INFO):
            run_writer(writer, lambda: writer.written >= 40 and depth(amqp_url, READINGS)[0] == 0)

        rows = influx.query("SELECT value0 FROM energy")
        assert sorted(int(r["meter_id"]) for r in influx.query("SELECT * FROM energy")) == list(
            range(1, 41)
        )
        assert len(rows) == 40
        assert all(size <= 8192 for size in sink.sizes)
        assert [d.body for d in drain(amqp_url, f"{READINGS}.dead")] == [huge.encode()]
        why = dead_reasons(caplog)
        assert list(why) == [huge.reading_id]
        assert "refused the write as too large (HTTP 413)" in why[huge.reading_id]
        # never taken for an outage
        assert not [r for r in caplog.records if "retrying" in r.getMessage()]
        assert not [r for r in caplog.records if "InfluxDB is back" in r.getMessage()]
    finally:
        service.stop()


def test_batches_are_capped_by_bytes(amqp_url: str, influx_v1: InfluxQL) -> None:
    readings = [many_fields(i, 150) for i in range(1, 61)]  # about 3.5 KB of lines each
    publish(amqp_url, READINGS, [r.encode() for r in readings])
    sink = CountingSink(make_sink(v1_settings(amqp_url, influx_v1)))
    writer = Writer(
        v1_settings(amqp_url, influx_v1, batch_bytes=100_000, flush_interval_ms=300), sink=sink
    )
    run_writer(writer, lambda: writer.written >= 60)
    assert len(sink.sizes) >= 2
    assert all(size <= 100_000 for size in sink.sizes)
    assert len(influx_v1.query("SELECT value0 FROM energy")) == 60


def meter_reading(meter: Meter, tick_ms: int = TICK, **fields: float) -> Reading:
    return Reading(meter, tick_ms, dict(fields), Status(up=True, latency_ms=1.0, requests=1))


def test_every_unwritable_reading_is_dead_lettered_alone_and_the_rest_is_stored(
    amqp_url: str, influx_v1: InfluxQL, caplog: pytest.LogCaptureFixture
) -> None:
    now_ms = int(time.time() * 1000)
    good = [
        meter_reading(Meter(1, "h", 502, 1, "sdm630", "C:\\meters\\hall A"), v=1.0),
        meter_reading(Meter(2, "h", 502, 1, "sdm630", "back\\slash, comma = equals"), v=2.0),
        meter_reading(Meter(3, "h", 502, 1, "sdm630", "plain"), v=3.0),
    ]
    surrogate = good[2].encode().replace(b'"plain"', b'"bad \\ud800 text"')
    poison = {
        "surrogate": (surrogate, "reading is malformed"),
        "trailing-backslash": (
            meter_reading(Meter(4, "h", 502, 1, "sdm630", "ends\\"), v=4.0).encode(),
            "tag description has a backslash at the end or before",
        ),
        "backslash-escape": (
            meter_reading(Meter(12, "h", 502, 1, "sdm630", "a\\ b"), v=12.0).encode(),
            "tag description has a backslash at the end or before",
        ),
        "long-tag": (
            meter_reading(Meter(5, "h", 502, 1, "sdm630", "x" * 70_000), v=5.0).encode(),
            "tag description is 70000 characters long",
        ),
        "control-in-type": (
            meter_reading(Meter(6, "h", 502, 1, "sdm\n630"), v=6.0).encode(),
            "tag type contains the control character",
        ),
        "reserved-field": (
            meter_reading(Meter(7, "h", 502, 1, "sdm630"), type=7.0).encode(),
            "measurement_name 'type' is reserved",
        ),
        "too-many-fields": (many_fields(8, 2001).encode(), "2001 fields, at most 2000"),
        "future": (
            meter_reading(Meter(9, "h", 502, 1, "sdm630"), now_ms + 86_400_000, v=9.0).encode(),
            "s in the future (at most EMM_WRITER_MAX_FUTURE_S=600 s)",
        ),
        "year-2000": (
            meter_reading(Meter(10, "h", 502, 1, "sdm630"), 946_684_800_000, v=10.0).encode(),
            "tick 2000-01-01T00:00:00+00:00 is ",
        ),
        "oversized": (
            Reading(
                Meter(11, "h", 502, 1, "sdm630"),
                TICK,
                {},
                Status(True),
                errors={"x": "y" * 5_000_000},
            ).encode(),
            "reading is 5000",
        ),
    }
    bodies = [good[0].encode(), *(body for body, _ in poison.values()), good[1].encode()]
    bodies.append(good[2].encode())
    ids = ["good-1", *poison, "good-2", "good-3"]
    publish(amqp_url, READINGS, bodies, message_ids=ids)
    writer = Writer(v1_settings(amqp_url, influx_v1, flush_interval_ms=300))
    with caplog.at_level(logging.ERROR):
        run_writer(writer, lambda: writer.written >= 3 and depth(amqp_url, READINGS)[0] == 0)

    dead = drain(amqp_url, f"{READINGS}.dead")
    assert sorted(d.properties.message_id for d in dead) == sorted(poison)
    assert {d.properties.message_id: d.body for d in dead} == {
        name: body for name, (body, _why) in poison.items()
    }
    why = dead_reasons(caplog)
    for name, (_body, reason) in poison.items():
        assert reason in why[name], (name, why[name])
    # A backslash is stored exactly as written.
    rows = influx_v1.query("SELECT v, description FROM energy")
    assert sorted((r["description"], r["v"]) for r in rows) == [
        ("C:\\meters\\hall A", 1.0),
        ("back\\slash, comma = equals", 2.0),
        ("plain", 3.0),
    ]
    assert depth(amqp_url, READINGS)[0] == 0


class FaultySink(CountingSink):
    """Raises a bug of ours for every write holding meter 13."""

    def write(self, chunks: list[bytes]) -> None:
        if any(b"meter_id=13," in chunk for chunk in chunks):
            raise RuntimeError("a fault of ours")
        super().write(chunks)


def test_an_unexpected_error_while_writing_dead_letters_only_its_reading(
    amqp_url: str, influx_v1: InfluxQL, caplog: pytest.LogCaptureFixture
) -> None:
    readings = [reading(i, voltageL1=float(i)) for i in range(10, 17)]
    publish(amqp_url, READINGS, [r.encode() for r in readings], [r.reading_id for r in readings])
    sink = FaultySink(make_sink(v1_settings(amqp_url, influx_v1)))
    writer = Writer(v1_settings(amqp_url, influx_v1, flush_interval_ms=300), sink=sink)
    with caplog.at_level(logging.ERROR):
        run_writer(writer, lambda: writer.written >= 6 and depth(amqp_url, READINGS)[0] == 0)
    assert [d.body for d in drain(amqp_url, f"{READINGS}.dead")] == [readings[3].encode()]
    why = dead_reasons(caplog)
    assert why == {readings[3].reading_id: "internal error: RuntimeError('a fault of ours')"}
    assert any("splitting the batch" in r.getMessage() for r in caplog.records)
    rows = influx_v1.query("SELECT voltageL1 FROM energy")
    assert sorted(r["voltageL1"] for r in rows) == [10.0, 11.0, 12.0, 14.0, 15.0, 16.0]


def test_a_flush_that_fails_settles_its_readings(
    amqp_url: str, influx_v1: InfluxQL, caplog: pytest.LogCaptureFixture, monkeypatch
) -> None:
    readings = [reading(i, voltageL1=float(i)) for i in (1, 2)]
    publish(amqp_url, READINGS, [r.encode() for r in readings])
    writer = Writer(v1_settings(amqp_url, influx_v1, flush_interval_ms=200))

    async def broken(items) -> None:
        raise KeyError("oops")

    monkeypatch.setattr(writer, "_store", broken)
    with caplog.at_level(logging.ERROR):
        run_writer(writer, lambda: len(drain_peek(amqp_url)) == 2, timeout_s=10)
    assert any("flushing 2 readings failed" in r.getMessage() for r in caplog.records)
    assert sorted(d.body for d in drain(amqp_url, f"{READINGS}.dead")) == sorted(
        r.encode() for r in readings
    )
    assert depth(amqp_url, READINGS)[0] == 0  # none left unacked for good


def drain_peek(amqp_url: str) -> list[int]:
    """The dead letters of emm.readings so far, as a list as long as their count."""
    return [0] * depth(amqp_url, f"{READINGS}.dead")[0]
