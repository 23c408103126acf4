"""The exchanges and queues, their dead-lettering by RabbitMQ, and migrating what an older
version declared.

    emm.jobs      direct exchange: the scheduler publishes each job with the routing key of
                  its gateway's shard queue
    emm.jobs.<k>  k in 0..SHARDS-1: the jobs of the gateways whose host:port hashes to k, and
                  a tick marker every tick; single active consumer: every worker consumes
                  every shard, RabbitMQ delivers each shard to one of them
                  rejected -> emm.jobs.dead
    emm.markers   fanout exchange bound to emm.jobs: a worker hands a shard over with a marker
                  through it (a delivery names the exchange it was published to, so a job
                  arriving through emm.markers is refused: only the scheduler may publish jobs)
    emm.readings  direct exchange and queue: workers publish readings and statuses, the writer
                  consumes; rejected -> emm.readings.dead

All durable, messages persistent. A work queue names `emm.dead` as its dead-letter exchange, so a
consumer gives up on a message with `nack(requeue=False)` and RabbitMQ moves it, body and
properties unchanged, in one step: it cannot be both dead-lettered and delivered again.

RabbitMQ dead-letters a job whose TTL ran out (no worker could start it before its deadline) as
well, but such a job is expected, not poison. RabbitMQ heads every dead letter with
`x-first-death-reason` and `x-first-death-queue`; `emm.dead` is a headers exchange and each
dead-letter queue is bound for `rejected` messages of its own work queues only (`x-match:
all-with-x`, which RabbitMQ 3.10 introduced: plain `all` ignores `x-` headers), one binding per
shard queue for `emm.jobs.dead`. An expired job or marker matches no binding and is dropped.

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

Publishing goes through named exchanges only, never the default one, so that what each service
may do can be said in RabbitMQ permissions (`broker.access`). A service whose user may not
declare (configure) finds the topology declared already, by an administrator or from the
definitions `broker.access` builds, and checks it passively.

Why SHARDS is 64: a shard is the unit of balance, so there should be more shards than gateways
at a typical site (21 gateways fall into about 18 distinct shards of 64, 16 of 32) and several
per worker at the most workers we run (16: 4 each). More would cost little but queues: every
worker consumes every shard (64 consumers a worker) and the scheduler sends 64 markers a tick.
Changing it re-routes every gateway; see the README before doing so.
"""

from __future__ import annotations

import logging
import zlib
from typing import Any

import aio_pika
import aio_pika.abc
import aiormq.exceptions

from broker.exceptions import LIBRARY_ERRORS
from emm.errors import ConfigError

log = logging.getLogger(__name__)

JOBS = "emm.jobs"  # the exchange jobs are published to (and the queue older versions used)
SHARDS = 64
MARKERS = "emm.markers"  # the exchange workers hand shards over through
READINGS = "emm.readings"  # the exchange and the queue of readings and statuses
DEAD_LETTER_EXCHANGE = "emm.dead"


def job_queue(shard: int) -> str:
    """The queue of shard `shard`: the jobs of the gateways that hash to it."""
    return f"{JOBS}.{shard}"


def shard_of(host: str, port: int) -> int:
    """The shard of gateway host:port: a stable hash (the same in every process and version,
    unlike Python's salted `hash`), so one gateway's jobs always reach one queue."""
    return zlib.crc32(f"{host}:{port}".encode()) % SHARDS


JOB_QUEUES = tuple(job_queue(k) for k in range(SHARDS))
QUEUES = (*JOB_QUEUES, READINGS)  # the work queues

# Who fills and who empties each work queue, for the migration message.
_ROLES = {
    READINGS: ("the workers", "writer"),
    **dict.fromkeys(JOB_QUEUES, ("the scheduler", "workers")),
}


def is_job_queue(queue: str) -> bool:
    return queue.startswith(f"{JOBS}.") and queue[len(JOBS) + 1 :].isdigit()


def dead_letter_queue(queue: str) -> str:
    """Where the messages of `queue` that can never succeed go (one queue for all shards)."""
    return f"{JOBS}.dead" if is_job_queue(queue) else f"{queue}.dead"


DEAD_QUEUES = tuple(sorted({dead_letter_queue(queue) for queue in QUEUES}))

# Limits of every queue; changing one changes the queues' arguments, which the migration below
# handles (a RabbitMQ policy can lower them further: the smaller value applies).
WORK_QUEUE_MAX_LENGTH = 1_000_000  # messages
WORK_QUEUE_MAX_BYTES = 2 << 30  # message bodies: 2 GiB
DEAD_QUEUE_MAX_LENGTH = 100_000
DEAD_QUEUE_MAX_BYTES = 512 << 20
DEAD_LETTER_TTL_MS = 14 * 24 * 3600 * 1000


def work_queue_arguments(queue: str) -> dict[str, Any]:
    """The arguments work queue `queue` is declared with: dead-lettering, limits, and for a
    job queue a single active consumer."""
    arguments: dict[str, Any] = {
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        "x-dead-letter-routing-key": dead_letter_queue(queue),
        "x-max-length": WORK_QUEUE_MAX_LENGTH,
        "x-max-length-bytes": WORK_QUEUE_MAX_BYTES,
        "x-overflow": "reject-publish",
    }
    if is_job_queue(queue):
        arguments["x-single-active-consumer"] = True
    return arguments


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


# exchange -> its type; emm.jobs and emm.readings route by the queue's name
EXCHANGES = {
    DEAD_LETTER_EXCHANGE: "headers",
    JOBS: "direct",
    MARKERS: "fanout",
    READINGS: "direct",
}
# (source, destination) exchange to exchange: a marker goes on to emm.jobs with its routing key
# (one binding rather than one per shard queue: each is a round trip at every connection)
EXCHANGE_BINDINGS = ((MARKERS, JOBS),)


def queue_bindings(queue: str) -> list[tuple[str, str]]:
    """The (exchange, routing key) pairs work queue `queue` is bound with."""
    return [(JOBS if is_job_queue(queue) else READINGS, queue)]


async def declare_topology(connection: aio_pika.abc.AbstractConnection) -> None:
    """Declare the exchanges and queues (idempotent), migrating what an older version declared:
    work queues without dead-lettering, and the single `emm.jobs` queue; raises ConfigError
    when one of those holds messages.

    With a user that may not declare, checks instead that all of it exists (ConfigError if
    not): the topology was declared beforehand, as `broker.access` says."""
    try:
        await _declare_topology(connection)
    except aiormq.exceptions.ChannelAccessRefused:
        await check_topology(connection)


async def check_topology(connection: aio_pika.abc.AbstractConnection) -> None:
    """Check passively (which needs no permission) that every exchange and queue exists;
    ConfigError naming the first that does not."""
    names = [("exchange", name) for name in EXCHANGES]
    names += [("queue", name) for name in (*DEAD_QUEUES, *QUEUES)]
    channel = await connection.channel(publisher_confirms=False)
    try:
        for kind, name in names:
            try:
                if kind == "exchange":
                    await channel.declare_exchange(name, passive=True)
                else:
                    await channel.declare_queue(name, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                raise ConfigError(
                    f"RabbitMQ has no {kind} {name} and this user may not declare it: load the "
                    "definitions `emm secrets` writes, or start a service once as a user that "
                    "may configure"
                ) from None
    finally:
        await _close(channel)


async def _declare_topology(connection: aio_pika.abc.AbstractConnection) -> None:
    await _retire_old_jobs_queue(connection)
    for dead in DEAD_QUEUES:
        if not await _declare(connection, dead, dead_queue_arguments()):
            await _migrate_dead(connection, dead)
    channel = await connection.channel(publisher_confirms=False)
    try:
        dead_letters = await channel.declare_exchange(
            DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.HEADERS, durable=True
        )
        for queue in QUEUES:
            dead_queue = await channel.get_queue(dead_letter_queue(queue), ensure=False)
            await dead_queue.bind(
                dead_letters, routing_key="", arguments=dead_letter_binding(queue)
            )
        exchanges = {
            name: await channel.declare_exchange(name, aio_pika.ExchangeType(kind), durable=True)
            for name, kind in EXCHANGES.items()
            if name != DEAD_LETTER_EXCHANGE
        }
        for source, destination in EXCHANGE_BINDINGS:
            await exchanges[destination].bind(exchanges[source], routing_key="")
    finally:
        await _close(channel)
    refused = await _declare_work_queues(connection, QUEUES)
    for queue in refused:
        await _migrate(connection, queue)
        if await _declare_work_queues(connection, (queue,)):
            raise ConfigError(f"queue {queue} could not be declared with its arguments")
        log.warning("queue %s was declared by an older version: empty, so declared again", queue)


async def _declare_work_queues(
    connection: aio_pika.abc.AbstractConnection, queues: tuple[str, ...]
) -> list[str]:
    """Declare `queues` with their arguments and bindings; returns those
    that exist with other arguments (RabbitMQ refuses such a redeclare, and closes the channel
    it was asked on, so the rest go on on a new one)."""
    refused: list[str] = []
    channel = await connection.channel(publisher_confirms=False)
    try:
        for queue in queues:
            if channel.is_closed:
                await _close(channel)
                channel = await connection.channel(publisher_confirms=False)
            try:
                declared = await channel.declare_queue(
                    queue, durable=True, arguments=work_queue_arguments(queue)
                )
            except aiormq.exceptions.ChannelPreconditionFailed:
                refused.append(queue)
                continue
            for exchange, routing_key in queue_bindings(queue):
                await declared.bind(exchange, routing_key=routing_key)
    finally:
        await _close(channel)
    return refused


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


async def _retire_old_jobs_queue(connection: aio_pika.abc.AbstractConnection) -> None:
    """Delete the one `emm.jobs` queue of an older version if it is empty; ConfigError if not."""
    channel = await connection.channel(publisher_confirms=False)
    try:
        old = await channel.declare_queue(JOBS, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return  # never declared, or retired already
    finally:
        await _close(channel)
    messages = await _delete_if_empty(connection, JOBS, old.declaration_result.message_count or 0)
    if messages:
        plural = "s" if messages != 1 else ""
        raise ConfigError(
            f"queue {JOBS} was declared by an older version (jobs now go to the queues "
            f"{job_queue(0)}..{job_queue(SHARDS - 1)} by gateway) and holds {messages} "
            f"message{plural}: stop the scheduler and let the older workers drain it, then "
            f"start again (or drop them: rabbitmqctl delete_queue -p VHOST {JOBS})"
        )
    log.warning(
        "queue %s was declared by an older version: empty, so deleted (jobs now go to %s..%s)",
        JOBS,
        job_queue(0),
        job_queue(SHARDS - 1),
    )


async def _migrate(connection: aio_pika.abc.AbstractConnection, queue: str) -> None:
    """Delete `queue`, declared by an older version with other arguments, if it is empty;
    ConfigError saying what to do if it is not."""
    channel = await connection.channel(publisher_confirms=False)
    try:
        old = await channel.declare_queue(queue, passive=True)
    finally:
        await _close(channel)
    messages = await _delete_if_empty(connection, queue, old.declaration_result.message_count or 0)
    if messages:
        fills, empties = _ROLES[queue]
        plural = "s" if messages != 1 else ""
        raise ConfigError(
            f"queue {queue} was declared by an older version without dead-lettering or limits "
            f"and holds {messages} message{plural}: stop {fills} and let the older {empties} "
            f"drain it, then start again (or drop them: rabbitmqctl delete_queue -p VHOST "
            f"{queue})"
        )


async def _migrate_dead(connection: aio_pika.abc.AbstractConnection, queue: str) -> None:
    """Replace dead-letter queue `queue`, declared by an older version, if it is empty; else
    keep it as it is (its dead letters are for an operator to look at, not to drop)."""
    channel = await connection.channel(publisher_confirms=False)
    try:
        old = await channel.declare_queue(queue, passive=True)
    finally:
        await _close(channel)
    messages = await _delete_if_empty(connection, queue, old.declaration_result.message_count or 0)
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
    if not await _declare(connection, queue, dead_queue_arguments()):
        raise ConfigError(f"queue {queue} could not be declared with its arguments")
    log.warning("queue %s was declared by an older version: empty, so declared again", queue)


async def _delete_if_empty(
    connection: aio_pika.abc.AbstractConnection, queue: str, messages: int
) -> int:
    """Delete `queue` if it holds no message; returns how many it holds (then kept)."""
    if messages:
        return messages
    channel = await connection.channel(publisher_confirms=False)
    try:
        await channel.queue_delete(queue, if_empty=True)
    except aiormq.exceptions.ChannelPreconditionFailed:
        return 1  # one arrived meanwhile
    finally:
        await _close(channel)
    return 0


async def _close(channel: aio_pika.abc.AbstractChannel) -> None:
    try:
        await channel.close()
    except LIBRARY_ERRORS:
        pass  # closed by RabbitMQ already
