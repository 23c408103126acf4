"""Dead-lettering by RabbitMQ, and migrating work queues an older version declared.

Runs on the test session's private vhost (see `amqp_server`); each test starts without queues.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import time

import pika
import pytest

from broker import JOBS, QUEUES, READINGS, Broker, Delivery, dead_letter_queue, job_queue, topology
from devservices.processes import emm_command
from emm.errors import BrokerError, ConfigError, MessageError, SinkRejected
from tests.integration.amqp_util import depth, drain

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SHARD = job_queue(7)  # a shard queue of the jobs


def declare_old(url: str, queue: str, bodies: list[bytes]) -> None:
    """Declare `queue` as the previous version did (no arguments) and put `bodies` in it."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        ch.queue_declare(queue, durable=True)
        ch.confirm_delivery()
        for body in bodies:
            ch.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
    finally:
        conn.close()


async def settle(broker: Broker, queue: str, errors: list[BaseException | None]) -> list[Delivery]:
    """Consume `queue`, settling the n-th message delivered with `errors[n]`."""
    got: list[Delivery] = []
    done = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        await broker.settle(queue, delivery, errors[len(got)])
        got.append(delivery)
        if len(got) == len(errors):
            done.set()

    await broker.consume(queue, handler)
    await asyncio.wait_for(done.wait(), 10)
    return got


def test_rejected_messages_are_dead_lettered_and_expired_jobs_are_not(
    amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        broker = Broker(amqp_url)
        await broker.connect(retry_forever=False)
        try:
            # a job no worker started before its TTL ran out: expected, dropped
            await broker.publish(SHARD, b"expires", expiration_s=0.05, message_id="late")
            await asyncio.sleep(0.5)
            await broker.publish(
                SHARD, b"poison", exchange=JOBS, expiration_s=60, message_id="job-1"
            )
            await broker.publish(READINGS, b"rejected", message_id="reading-1")
            await settle(broker, SHARD, [MessageError("job is not valid JSON", b"poison")])
            await settle(broker, READINGS, [SinkRejected("InfluxDB rejected the write")])
        finally:
            await broker.close()

    with caplog.at_level(logging.ERROR):
        asyncio.run(scenario())

    jobs = drain(amqp_url, dead_letter_queue(SHARD))
    readings = drain(amqp_url, dead_letter_queue(READINGS))
    assert [(d.body, d.properties.message_id) for d in jobs] == [(b"poison", "job-1")]
    assert [(d.body, d.properties.message_id) for d in readings] == [(b"rejected", "reading-1")]
    for queue, dead in ((SHARD, jobs[0]), (READINGS, readings[0])):
        assert dead.headers["x-first-death-reason"] == "rejected"
        assert dead.headers["x-first-death-queue"] == queue
        assert [(d["reason"], d["queue"]) for d in dead.headers["x-death"]] == [("rejected", queue)]
        assert dead.properties.expiration is None  # RabbitMQ drops it: a dead letter stays
    assert depth(amqp_url, SHARD)[0] == depth(amqp_url, READINGS)[0] == 0
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert lines == [
        "emm.jobs.7: message job-1 dead-lettered to emm.jobs.dead: job is not valid JSON",
        "emm.readings: message reading-1 dead-lettered to emm.readings.dead: "
        "InfluxDB rejected the write",
    ]


def test_requeued_and_acked_messages_do_not_reach_the_dead_letter_queue(amqp_url: str) -> None:
    async def scenario() -> None:
        broker = Broker(amqp_url)
        await broker.connect(retry_forever=False)
        try:
            await broker.publish(READINGS, b"again", message_id="r")
            # requeued: delivered again, then acked
            first, again = await settle(broker, READINGS, [BrokerError("try later"), None])
            assert (first.redelivered, again.redelivered) == (False, True)
            assert again.body == b"again"
        finally:
            await broker.close()

    asyncio.run(scenario())
    assert drain(amqp_url, dead_letter_queue(READINGS)) == []
    assert depth(amqp_url, READINGS)[0] == 0


def test_an_empty_queue_of_an_older_version_is_declared_again(
    amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    for queue in (JOBS, READINGS):
        declare_old(amqp_url, queue, [])

    async def scenario() -> None:
        broker = Broker(amqp_url)
        await broker.connect(retry_forever=False)
        await broker.close()

    with caplog.at_level(logging.INFO):
        asyncio.run(scenario())
    migrated = [r.getMessage() for r in caplog.records if "older version" in r.getMessage()]
    assert migrated == [
        "queue emm.jobs was declared by an older version: empty, so deleted (jobs now go to "
        "emm.jobs.0..emm.jobs.63)",
        "queue emm.readings was declared by an older version: empty, so declared again",
    ]
    assert depth(amqp_url, READINGS)[0] == 0
    # Now declared with dead-lettering: a rejected message reaches the dead-letter queue.
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish(JOBS, SHARD, b"x", pika.BasicProperties(delivery_mode=2))
        method, _props, _body = ch.basic_get(SHARD)
        assert method is not None
        ch.basic_nack(method.delivery_tag, requeue=False)
    finally:
        conn.close()
    time.sleep(0.2)
    assert [d.body for d in drain(amqp_url, dead_letter_queue(SHARD))] == [b"x"]


def test_a_queue_of_an_older_version_holding_messages_stops_the_service(amqp_url: str) -> None:
    declare_old(amqp_url, JOBS, [b"old job 1", b"old job 2"])

    async def scenario() -> None:
        broker = Broker(amqp_url)
        try:
            await broker.connect(retry_forever=False)
        finally:
            await broker.close()

    with pytest.raises(ConfigError) as raised:
        asyncio.run(scenario())
    message = str(raised.value)
    assert message.startswith(
        "queue emm.jobs was declared by an older version (jobs now go to the queues "
        "emm.jobs.0..emm.jobs.63 by gateway) and holds 2 messages"
    )
    assert "stop the scheduler" in message
    assert "rabbitmqctl" in message
    assert depth(amqp_url, JOBS)[0] == 2  # nothing lost

    # The service says so in one line and exits.
    result = subprocess.run(
        [*emm_command(), "worker"],
        env={**os.environ, "EMM_AMQP_URL": amqp_url},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 78
    assert result.stderr.strip().splitlines()[-1] == f"emm worker: {message}"
    assert "Traceback" not in result.stderr
    assert depth(amqp_url, JOBS)[0] == 2


def test_a_fault_of_ours_dead_letters_with_its_traceback(
    amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        broker = Broker(amqp_url)
        await broker.connect(retry_forever=False)
        try:
            await broker.publish(SHARD, b"{}", expiration_s=60, message_id="job-2")
            await settle(broker, SHARD, [KeyError("plan")])
        finally:
            await broker.close()

    with caplog.at_level(logging.ERROR):
        asyncio.run(scenario())
    assert [d.body for d in drain(amqp_url, dead_letter_queue(SHARD))] == [b"{}"]
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage() == (
        "emm.jobs.7: message job-2 dead-lettered to emm.jobs.dead: internal error: KeyError('plan')"
    )
    assert record.exc_info is not None and record.exc_info[0] is KeyError


def get_all(url: str, queue: str) -> list[bytes]:
    """Take (and ack) every message of `queue`, whatever it was declared with."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    out = []
    try:
        ch = conn.channel()
        while True:
            method, _props, body = ch.basic_get(queue)
            if method is None:
                return out
            out.append(body)
            ch.basic_ack(method.delivery_tag)
    finally:
        conn.close()


def test_queues_carry_their_limits(amqp_url: str) -> None:
    async def scenario() -> None:
        broker = Broker(amqp_url)
        await broker.connect(retry_forever=False)
        await broker.close()

    asyncio.run(scenario())
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        ch = conn.channel()
        # RabbitMQ accepts a redeclare only with the very arguments the queue has.
        for queue in QUEUES:
            ch.queue_declare(queue, durable=True, arguments=topology.work_queue_arguments(queue))
            ch.queue_declare(
                dead_letter_queue(queue), durable=True, arguments=topology.dead_queue_arguments()
            )
    finally:
        conn.close()
    assert topology.work_queue_arguments(JOBS)["x-overflow"] == "reject-publish"
    assert topology.dead_queue_arguments()["x-message-ttl"] == 14 * 24 * 3600 * 1000


def test_a_full_work_queue_refuses_a_publish_and_its_publisher_knows(
    amqp_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(topology, "WORK_QUEUE_MAX_LENGTH", 3)

    async def scenario() -> None:
        broker = Broker(amqp_url)
        await broker.connect(retry_forever=False)
        try:
            for i in range(3):
                await broker.publish(READINGS, b"r%d" % i, message_id=f"r{i}")
            with pytest.raises(BrokerError, match=r"publish to emm\.readings not confirmed"):
                await broker.publish(READINGS, b"r3", message_id="r3")
        finally:
            await broker.close()

    asyncio.run(scenario())
    # the oldest are kept, the refused one was never taken, nothing went to the dead letters
    assert [d.body for d in drain(amqp_url, READINGS)] == [b"r0", b"r1", b"r2"]
    assert drain(amqp_url, dead_letter_queue(READINGS)) == []


def test_a_full_dead_letter_queue_drops_its_oldest(
    amqp_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(topology, "DEAD_QUEUE_MAX_LENGTH", 2)

    async def scenario() -> None:
        broker = Broker(amqp_url)
        await broker.connect(retry_forever=False)
        try:
            for i in range(3):
                await broker.publish(READINGS, b"r%d" % i, message_id=f"r{i}")
            await settle(broker, READINGS, [SinkRejected("bad")] * 3)
        finally:
            await broker.close()

    asyncio.run(scenario())
    time.sleep(0.2)
    assert [d.body for d in drain(amqp_url, dead_letter_queue(READINGS))] == [b"r1", b"r2"]


def test_dead_letter_queues_of_an_older_version_are_migrated_or_kept(
    amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    declare_old(amqp_url, dead_letter_queue(JOBS), [])
    declare_old(amqp_url, dead_letter_queue(READINGS), [b"old dead letter"])

    async def scenario() -> None:
        broker = Broker(amqp_url)
        await broker.connect(retry_forever=False)  # starts: dead letters stop nothing
        try:
            await broker.publish(READINGS, b"new", message_id="n")
            await settle(broker, READINGS, [SinkRejected("bad")])
        finally:
            await broker.close()

    with caplog.at_level(logging.WARNING):
        asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records if "older version" in r.getMessage()]
    assert lines == [
        "queue emm.jobs.dead was declared by an older version: empty, so declared again",
        "queue emm.readings.dead was declared by an older version without limits and holds 1 "
        "dead letter(s): kept as it is, without a cap or retention, until it is emptied "
        "(rabbitmqctl purge_queue -p VHOST emm.readings.dead once they are looked at)",
    ]
    time.sleep(0.2)
    assert get_all(amqp_url, dead_letter_queue(READINGS)) == [b"old dead letter", b"new"]
