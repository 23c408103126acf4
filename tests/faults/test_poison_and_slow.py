"""Messages that can never succeed go to the dead-letter queues at once; a slow device does not
cost the worker its connection or its acks."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pika
import pytest

from broker import JOB_QUEUES, READINGS, dead_letter_queue, job_queue
from devservices.influx import PrivateInfluxDB
from devservices.processes import Processes
from devservices.rabbitmq import PrivateRabbitMQ
from emm.messages import Meter, Reading, Status
from tests.faults.harness import Pipeline, check, now_ms, tick_floor

pytestmark = [pytest.mark.integration, pytest.mark.timeout(200)]


def publish(url: str, queue: str, body: bytes, message_id: str) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        props = pika.BasicProperties(delivery_mode=2, message_id=message_id)
        ch.basic_publish("", queue, body, props)
    finally:
        conn.close()


def drain(url: str, queue: str) -> list[tuple[bytes, dict]]:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    out = []
    try:
        ch = conn.channel()
        while True:
            method, props, body = ch.basic_get(queue)
            if method is None:
                return out
            out.append((body, dict(props.headers or {})))
            ch.basic_ack(method.delivery_tag)
    finally:
        conn.close()


def reason(log: str, queue: str, message_id: str) -> str:
    """The one log line that says why message `message_id` of `queue` was dead-lettered."""
    lines = [
        line
        for line in log.splitlines()
        if f"{queue}: message {message_id} dead-lettered to {dead_letter_queue(queue)}: " in line
    ]
    assert len(lines) == 1, lines
    return lines[0]


def test_poison_is_dead_lettered_and_delays_nothing(
    pg_dsn: str,
    rabbit: PrivateRabbitMQ,
    influx: PrivateInfluxDB,
    processes: Processes,
    tmp_path: Path,
) -> None:
    stats = tmp_path / "writer-stats.txt"
    pipeline = Pipeline(
        processes,
        pg_dsn,
        rabbit.url,
        influx.url,
        meters=20,
        period_s=5,
        workers=1,
        extra_env={"EMM_WRITER_STATS_FILE": str(stats)},
    )
    first = pipeline.run()
    p_ms = pipeline.period_ms
    time.sleep(max(0.0, (first + p_ms + 500 - now_ms()) / 1000))

    # A field InfluxDB already holds as a string: a float for it is rejected with 400.
    influx_write = f'energy,meter_id=999 poison="text" {first - 3_600_000}'
    urllib.request.urlopen(
        f"{influx.url}/write?db=energy&precision=ms", data=influx_write.encode(), timeout=10
    ).read()
    rejected = Reading(
        Meter(999, "127.0.0.1", 1, 1, "sdm630"), first, {"poison": 1.0}, Status(True)
    ).encode()
    bad_job = b'{"v": 1, "kind": "job", "meter": {"id": 1}'
    bad_reading = b'{"v": 1, "kind": "reading", "tick_ms": "soon"}'
    injected_at = now_ms()
    publish(rabbit.url, job_queue(0), bad_job, "bad-job")
    publish(rabbit.url, READINGS, bad_reading, "bad-reading")
    publish(rabbit.url, READINGS, rejected, "rejected-reading")

    last = tick_floor(injected_at, pipeline.period_s) + 3 * p_ms
    time.sleep(max(0.0, (last + 2000 - now_ms()) / 1000))
    verdict = check(pipeline, influx, first, last)
    assert verdict.lost == [], str(verdict)
    assert verdict.dup == [], str(verdict)

    dead_jobs = drain(rabbit.url, dead_letter_queue(job_queue(0)))
    dead_readings = drain(rabbit.url, f"{READINGS}.dead")
    assert [body for body, _h in dead_jobs] == [bad_job]
    assert sorted(body for body, _h in dead_readings) == sorted([bad_reading, rejected])
    # Dead-lettered by RabbitMQ (nack without requeue); the reason is in the consumer's log.
    for _body, headers in dead_jobs + dead_readings:
        assert headers["x-first-death-reason"] == "rejected"
        assert [death["reason"] for death in headers["x-death"]] == ["rejected"]
    assert dead_jobs[0][1]["x-first-death-queue"] == job_queue(0)
    assert {h["x-first-death-queue"] for _b, h in dead_readings} == {READINGS}
    job_reason = reason(pipeline.log("worker0"), job_queue(0), "bad-job")
    assert "job is not valid JSON" in job_reason
    assert "rejected the write (HTTP 400)" in reason(
        pipeline.log("writer"), READINGS, "rejected-reading"
    )
    bad_reading_reason = reason(pipeline.log("writer"), READINGS, "bad-reading")
    assert (
        "reading lacks the key" in bad_reading_reason
        or "reading is malformed" in bad_reading_reason
    )
    # Each went once: nothing came back to the work queues.
    assert "delivered again" not in pipeline.log("worker0")

    # Readings of the ticks after the poison were written within one tick of their tick.
    lags = [
        int(written) - int(tick)
        for written, tick, _count in (line.split() for line in stats.read_text().splitlines())
        if int(tick) > injected_at and int(tick) <= last
    ]
    assert lags, "no readings written after the poison"
    assert max(lags) < p_ms, lags


def test_a_read_longer_than_the_heartbeat_keeps_connection_and_ack(
    pg_dsn: str, rabbit: PrivateRabbitMQ, influx: PrivateInfluxDB, processes: Processes
) -> None:
    heartbeat_url = rabbit.url.replace("heartbeat=10", "heartbeat=1")
    pipeline = Pipeline(
        processes,
        pg_dsn,
        heartbeat_url,
        influx.url,
        meters=3,
        period_s=10,
        workers=1,
        profile="virtual_modbustcp",
        simulator_args=["--port-per-meter", "--latency-ms", "4000"],
        extra_env={"EMM_READ_TIMEOUT_S": "8"},
    )
    first = pipeline.run()
    last = first + 2 * pipeline.period_s * 1000
    time.sleep(max(0.0, (last + 6000 - now_ms()) / 1000))
    verdict = check(pipeline, influx, first, last)
    assert verdict.lost == [], str(verdict)
    assert verdict.dup == [], str(verdict)
    latencies = influx.query("SELECT latency_ms FROM meter_status")
    assert min(r["latency_ms"] for r in latencies) >= 4000
    worker_log = pipeline.log("worker0")
    assert "lost the connection" not in worker_log
    assert "delivered again" not in worker_log
    assert sum(rabbit.queue_depth(queue) for queue in JOB_QUEUES) == 0
