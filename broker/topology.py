"""The queues, their dead-lettering by RabbitMQ, and migrating queues an older version declared.

    emm.jobs      the scheduler publishes, workers consume     rejected -> emm.jobs.dead
    emm.readings  workers publish, the writer consumes         rejected -> emm.readings.dead

All durable, messages persistent. A work queue names `emm.dead` as its dead-letter exchange, so a
consumer gives up on a message with `nack(requeue=False)` and RabbitMQ moves it, body and
properties unchanged, in one step: it cannot be both dead-lettered and delivered again.

RabbitMQ dead-letters a job whose TTL ran out (no worker could start it before its deadline) as
well, but such a job is expected, not poison. RabbitMQ heads every dead letter with
`x-first-death-reason` and `x-first-death-queue`; `emm.dead` is a headers exchange and each
dead-letter queue is bound for `rejected` messages of its own work queue only (`x-match:
all-with-x`, which RabbitMQ 3.10 introduced: plain `all` ignores `x-` headers). An expired job
matches no binding and is dropped, as it was before.
"""

from __future__ import annotations

import logging
from typing import Any

import aio_pika
import aio_pika.abc
import aiormq.exceptions

from broker.exceptions import LIBRARY_ERRORS
from emm.errors import ConfigError

log = logging.getLogger(__name__)

JOBS = "emm.jobs"
READINGS = "emm.readings"
QUEUES = (JOBS, READINGS)
DEAD_LETTER_EXCHANGE = "emm.dead"

# Who fills and who empties each work queue, for the migration message.
_ROLES = {JOBS: ("the scheduler", "workers"), READINGS: ("the workers", "writer")}


def dead_letter_queue(queue: str) -> str:
    """Where the messages of `queue` that can never succeed go."""
    return f"{queue}.dead"


def queue_arguments(queue: str) -> dict[str, Any]:
    """The arguments work queue `queue` is declared with."""
    return {
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        "x-dead-letter-routing-key": dead_letter_queue(queue),
    }


def dead_letter_binding(queue: str) -> dict[str, Any]:
    """The binding of `queue`'s dead-letter queue to `emm.dead`: rejected messages of `queue`."""
    return {
        "x-match": "all-with-x",
        "x-first-death-reason": "rejected",
        "x-first-death-queue": queue,
    }


async def declare_topology(connection: aio_pika.abc.AbstractConnection) -> None:
    """Declare the exchange and queues (idempotent), migrating work queues an older version
    declared without dead-lettering; raises ConfigError when one holds messages."""
    channel = await connection.channel(publisher_confirms=False)
    try:
        exchange = await channel.declare_exchange(
            DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.HEADERS, durable=True
        )
        for queue in QUEUES:
            dead = await channel.declare_queue(dead_letter_queue(queue), durable=True)
            await dead.bind(exchange, routing_key="", arguments=dead_letter_binding(queue))
    finally:
        await _close(channel)
    for queue in QUEUES:
        if not await _declare_work_queue(connection, queue):
            await _migrate(connection, queue)


async def _declare_work_queue(connection: aio_pika.abc.AbstractConnection, queue: str) -> bool:
    """Declare `queue` with its arguments; False if it exists with others (RabbitMQ refuses a
    redeclare with other arguments, and closes the channel it was asked on)."""
    channel = await connection.channel(publisher_confirms=False)
    try:
        await channel.declare_queue(queue, durable=True, arguments=queue_arguments(queue))
        return True
    except aiormq.exceptions.ChannelPreconditionFailed:
        return False
    finally:
        await _close(channel)


async def _migrate(connection: aio_pika.abc.AbstractConnection, queue: str) -> None:
    """Replace `queue`, declared by an older version, if it is empty."""
    channel = await connection.channel(publisher_confirms=False)
    try:
        old = await channel.declare_queue(queue, passive=True)
        messages = old.declaration_result.message_count or 0
        if not messages:
            try:
                await channel.queue_delete(queue, if_empty=True)
            except aiormq.exceptions.ChannelPreconditionFailed:
                messages = 1  # one arrived meanwhile
    finally:
        await _close(channel)
    if messages:
        fills, empties = _ROLES[queue]
        plural = "s" if messages != 1 else ""
        raise ConfigError(
            f"queue {queue} was declared by an older version without dead-lettering and holds "
            f"{messages} message{plural}: stop {fills} and let the older {empties} drain it, "
            f"then start again (or drop them: rabbitmqctl delete_queue -p VHOST {queue})"
        )
    if not await _declare_work_queue(connection, queue):
        raise ConfigError(f"queue {queue} could not be declared with dead-lettering")
    log.warning("queue %s was declared by an older version: empty, so declared again", queue)


async def _close(channel: aio_pika.abc.AbstractChannel) -> None:
    try:
        await channel.close()
    except LIBRARY_ERRORS:
        pass  # closed by RabbitMQ already
