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

Every queue has a length and byte limit (`work_queue_arguments`, `dead_queue_arguments`):
- a full work queue refuses new messages (`x-overflow: reject-publish`): the publisher's confirm
  fails and it keeps the message and retries (the scheduler until half a tick, a worker's
  outbox until RabbitMQ takes it), so nothing is dropped without its publisher knowing;
- a full dead-letter queue drops its oldest dead letters (`drop-head`), and each dead letter
  expires after `DEAD_LETTER_TTL_MS` (14 days): the retention of poison to look into.

A queue declared by an older version with other arguments is migrated: deleted and declared
again if it is empty; a work queue that holds messages stops the service with what to do; a
dead-letter queue that holds dead letters is kept as it is, without the new limits, until it
has been emptied.
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


# Limits of every queue; changing one changes the queues' arguments, which the migration below
# handles (a RabbitMQ policy can lower them further: the smaller value applies).
WORK_QUEUE_MAX_LENGTH = 1_000_000  # messages
WORK_QUEUE_MAX_BYTES = 2 << 30  # message bodies: 2 GiB
DEAD_QUEUE_MAX_LENGTH = 100_000
DEAD_QUEUE_MAX_BYTES = 512 << 20
DEAD_LETTER_TTL_MS = 14 * 24 * 3600 * 1000


def work_queue_arguments(queue: str) -> dict[str, Any]:
    """The arguments work queue `queue` is declared with: dead-lettering and limits."""
    return {
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        "x-dead-letter-routing-key": dead_letter_queue(queue),
        "x-max-length": WORK_QUEUE_MAX_LENGTH,
        "x-max-length-bytes": WORK_QUEUE_MAX_BYTES,
        "x-overflow": "reject-publish",
    }


def dead_queue_arguments() -> dict[str, Any]:
    """The arguments a dead-letter queue is declared with: its limits and retention."""
    return {
        "x-max-length": DEAD_QUEUE_MAX_LENGTH,
        "x-max-length-bytes": DEAD_QUEUE_MAX_BYTES,
        "x-overflow": "drop-head",
        "x-message-ttl": DEAD_LETTER_TTL_MS,
    }


def dead_letter_binding(queue: str) -> dict[str, Any]:
    """The binding of `queue`'s dead-letter queue to `emm.dead`: rejected messages of `queue`."""
    return {
        "x-match": "all-with-x",
        "x-first-death-reason": "rejected",
        "x-first-death-queue": queue,
    }


async def declare_topology(connection: aio_pika.abc.AbstractConnection) -> None:
    """Declare the exchange and queues (idempotent), migrating queues an older version declared
    with other arguments; raises ConfigError when such a work queue holds messages."""
    for queue in QUEUES:
        dead = dead_letter_queue(queue)
        arguments = dead_queue_arguments()
        if not await _declare(connection, dead, arguments):
            await _migrate_dead(connection, dead, arguments)
    channel = await connection.channel(publisher_confirms=False)
    try:
        exchange = await channel.declare_exchange(
            DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.HEADERS, durable=True
        )
        for queue in QUEUES:
            dead_queue = await channel.get_queue(dead_letter_queue(queue), ensure=False)
            await dead_queue.bind(exchange, routing_key="", arguments=dead_letter_binding(queue))
    finally:
        await _close(channel)
    for queue in QUEUES:
        if not await _declare(connection, queue, work_queue_arguments(queue)):
            await _migrate(connection, queue)


async def _declare(
    connection: aio_pika.abc.AbstractConnection, queue: str, arguments: dict[str, Any]
) -> bool:
    """Declare `queue` with `arguments`; False if it exists with others (RabbitMQ refuses a
    redeclare with other arguments, and closes the channel it was asked on)."""
    channel = await connection.channel(publisher_confirms=False)
    try:
        await channel.declare_queue(queue, durable=True, arguments=arguments)
        return True
    except aiormq.exceptions.ChannelPreconditionFailed:
        return False
    finally:
        await _close(channel)


async def _delete_if_empty(connection: aio_pika.abc.AbstractConnection, queue: str) -> int:
    """Delete `queue` if it holds no message; else how many it holds."""
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
    return messages


async def _migrate(connection: aio_pika.abc.AbstractConnection, queue: str) -> None:
    """Replace work queue `queue`, declared by an older version, if it is empty."""
    messages = await _delete_if_empty(connection, queue)
    if messages:
        fills, empties = _ROLES[queue]
        plural = "s" if messages != 1 else ""
        raise ConfigError(
            f"queue {queue} was declared by an older version without dead-lettering or limits "
            f"and holds {messages} message{plural}: stop {fills} and let the older {empties} "
            f"drain it, then start again (or drop them: rabbitmqctl delete_queue -p VHOST "
            f"{queue})"
        )
    if not await _declare(connection, queue, work_queue_arguments(queue)):
        raise ConfigError(f"queue {queue} could not be declared with its arguments")
    log.warning("queue %s was declared by an older version: empty, so declared again", queue)


async def _migrate_dead(
    connection: aio_pika.abc.AbstractConnection, queue: str, arguments: dict[str, Any]
) -> None:
    """Replace dead-letter queue `queue`, declared by an older version, if it is empty; else
    keep it as it is (its dead letters are for an operator to look at, not to drop)."""
    messages = await _delete_if_empty(connection, queue)
    if messages:
        log.warning(
            "queue %s was declared by an older version without limits and holds %d dead "
            "letter(s): kept as it is, without a cap or retention, until it is emptied "
            "(rabbitmqctl purge_queue -p VHOST %s once they are looked at)",
            queue,
            messages,
            queue,
        )
        return
    if not await _declare(connection, queue, arguments):
        raise ConfigError(f"queue {queue} could not be declared with its arguments")
    log.warning("queue %s was declared by an older version: empty, so declared again", queue)


async def _close(channel: aio_pika.abc.AbstractChannel) -> None:
    try:
        await channel.close()
    except LIBRARY_ERRORS:
        pass  # closed by RabbitMQ already
