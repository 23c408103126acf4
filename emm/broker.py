"""RabbitMQ: the queues, publishing with confirms, consuming with manual acks, dead-lettering.

Built on aio-pika so a worker shares one event loop between AMQP and pymodbus's async client.
aio-pika/aiormq errors are turned into BrokerError here; nothing above imports them.

Topology (all durable, messages persistent):
    emm.jobs       -> emm.jobs.dead        scheduler publishes, workers consume
    emm.readings   -> emm.readings.dead    workers publish, the writer consumes
A dead-lettered message keeps its original body; headers say why and where it came from.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import aio_pika.abc
import aio_pika.connection
import aio_pika.exceptions
import aiormq.connection
import aiormq.exceptions

from emm.errors import BrokerError, MessageError, SinkRejected

log = logging.getLogger(__name__)

JOBS = "emm.jobs"
READINGS = "emm.readings"
QUEUES = (JOBS, READINGS)
RECONNECT_INTERVAL_S = 1.0


def dead_letter_queue(queue: str) -> str:
    return f"{queue}.dead"


Delivery = aio_pika.abc.AbstractIncomingMessage
_ERRORS = (*aio_pika.exceptions.CONNECTION_EXCEPTIONS, asyncio.TimeoutError)


class _CoalescingTransport:
    """A socket transport that sends what was written during one event-loop pass in one go.

    aiormq writes every frame (each publish, each ack) with its own `write`, and each write to an
    idle socket is a send(2). On loopback a send also runs the receiver's TCP path, so a worker
    acking and publishing thousands of messages a second spent a fifth of its CPU there. Frames
    are instead gathered and handed to the real transport once, at the end of the pass; flow
    control stays the real transport's.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _CoalescingTCP(aiormq.connection.TransportFactory):
    """aiormq's plain TCP transport, with writes coalesced (see `_CoalescingTransport`)."""

    async def create(
        self, url: Any, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        kwargs.pop("ssl_context_provider", None)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=kwargs.pop("limit", 2**16), loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            transport, _ = await loop.create_connection(
                lambda: protocol, host=url.host, port=url.port, **kwargs
            )
        except OSError as exc:
            raise aiormq.exceptions.AMQPConnectionError(*exc.args) from exc
        wrapped: Any = _CoalescingTransport(transport, loop)  # a Transport in all it is used for
        return reader, asyncio.StreamWriter(wrapped, protocol, reader, loop)


class _Connection(aio_pika.Connection):
    """aio-pika's connection, letting `transport_factory` through to aiormq."""

    PARAMETERS = (
        *aio_pika.Connection.PARAMETERS,
        aio_pika.abc.ConnectionParameter(
            name="transport_factory", parser=lambda value: value, is_kwarg=True
        ),
    )


class Outcome(Enum):
    """What to do with a consumed message once it has been handled."""

    ACK = "ack"
    REQUEUE = "requeue"
    DEAD_LETTER = "dead-letter"


def decide(error: BaseException | None) -> Outcome:
    """The single rule for the fate of a message: done, try again later, or never.

    Messages that can never succeed (malformed, rejected by InfluxDB) are dead-lettered; anything
    else that failed is retried, because the failure was not the message's fault.
    """
    if error is None:
        return Outcome.ACK
    if isinstance(error, MessageError | SinkRejected):
        return Outcome.DEAD_LETTER
    return Outcome.REQUEUE


class Broker:
    """One AMQP connection with a confirming channel, reopened whenever it is lost.

    Reconnection is ours rather than aio-pika's robust connection: every close we did not ask
    for (a killed broker, a clean broker shutdown, a channel error) leads to a fresh connection,
    the queues declared again and every consumer restarted, with capped backoff in between.
    While disconnected `publish` fails at once with BrokerError, so callers decide to retry.
    """

    def __init__(self, url: str, *, prefetch: int = 0, name: str = "emm") -> None:
        self.url = url
        self.prefetch = prefetch
        self.name = name
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._consumers: list[tuple[str, Callable[[Delivery], Awaitable[None]]]] = []
        self._connected = asyncio.Event()
        self._closing = False
        self._reconnecting: asyncio.Task[None] | None = None
        self.reconnects = 0

    async def _open(self) -> None:
        # what aio_pika.connect does, with our transport factory (it would put the factory
        # into the URL's query instead)
        factory = None if urlsplit(self.url).scheme == "amqps" else _CoalescingTCP()
        connection = _Connection(
            aio_pika.connection.make_url(self.url),
            client_properties={"connection_name": self.name},
            transport_factory=factory,
        )
        await connection.connect(timeout=10)
        try:
            channel = await connection.channel(publisher_confirms=True)
            if self.prefetch:
                await channel.set_qos(prefetch_count=self.prefetch)
            await declare_topology(channel)
            for queue, handler in self._consumers:
                q = await channel.get_queue(queue, ensure=False)
                await q.consume(handler, no_ack=False)
        except BaseException:
            await connection.close()
            raise
        self._connection, self._channel = connection, channel
        connection.close_callbacks.add(self._on_close)
        channel.close_callbacks.add(self._on_close)
        self._connected.set()

    def _on_close(self, _sender: object, exc: BaseException | None = None) -> None:
        if self._closing or not self._connected.is_set():
            return
        self._connected.clear()
        log.warning("lost the connection to RabbitMQ (%r); reconnecting", exc)
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        old = self._connection
        self._connection = self._channel = None
        if old is not None and not old.is_closed:
            try:
                await old.close()
            except _ERRORS:
                pass
        delay = RECONNECT_INTERVAL_S
        while not self._closing:
            try:
                await self._open()
                self.reconnects += 1
                log.info("reconnected to RabbitMQ as %s", self.name)
                return
            except _ERRORS as exc:
                log.debug("RabbitMQ still unreachable (%r)", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def connect(self, *, retry_forever: bool = True) -> None:
        """Connect and declare the queues, waiting for the broker to come up if it is not yet."""
        delay = 0.5
        while True:
            try:
                await self._open()
                log.info("connected to RabbitMQ as %s", self.name)
                return
            except _ERRORS as exc:
                if not retry_forever:
                    raise BrokerError(f"cannot connect to RabbitMQ: {exc!r}") from None
                log.warning("RabbitMQ not reachable (%r); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    @property
    def connected(self) -> bool:
        """Whether the connection to RabbitMQ is up right now."""
        return self._connected.is_set()

    @property
    def channel(self) -> aio_pika.abc.AbstractChannel:
        if self._channel is None or not self._connected.is_set():
            raise BrokerError("not connected to RabbitMQ")
        return self._channel

    async def publish(
        self,
        queue: str,
        body: bytes,
        *,
        expiration_s: float | None = None,
        headers: dict[str, Any] | None = None,
        message_id: str | None = None,
    ) -> None:
        """Publish a persistent message and return once the broker confirmed it."""
        message = aio_pika.Message(
            body,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            content_type="application/json",
            expiration=expiration_s,
            headers=headers,
            message_id=message_id,
        )
        channel = self.channel
        try:
            await channel.default_exchange.publish(message, routing_key=queue, timeout=30)
        except _ERRORS as exc:
            raise BrokerError(f"publish to {queue} not confirmed: {exc!r}") from None

    async def consume(self, queue: str, handler: Callable[[Delivery], Awaitable[None]]) -> None:
        """Deliver each message of `queue` to `handler` (which must ack or reject it), also
        after every reconnection."""
        self._consumers.append((queue, handler))
        try:
            q = await self.channel.get_queue(queue, ensure=False)
            await q.consume(handler, no_ack=False)
        except _ERRORS as exc:
            raise BrokerError(f"cannot consume {queue}: {exc!r}") from None

    async def dead_letter(self, queue: str, delivery: Delivery, reason: str) -> None:
        """Move a message that can never succeed to the queue's dead-letter queue, then ack it."""
        headers = dict(delivery.headers or {})
        headers["x-emm-error"] = reason[:1000]
        headers["x-emm-queue"] = queue
        await self.publish(
            dead_letter_queue(queue), delivery.body, headers=headers, message_id=delivery.message_id
        )
        await ack(delivery)

    async def settle(self, queue: str, delivery: Delivery, error: BaseException | None) -> None:
        """Ack, requeue or dead-letter `delivery` as `decide` says for `error`."""
        outcome = decide(error)
        if outcome is Outcome.ACK:
            await ack(delivery)
        elif outcome is Outcome.DEAD_LETTER:
            await self.dead_letter(queue, delivery, str(error))
        else:
            await nack(delivery, requeue=True)

    async def close(self) -> None:
        self._closing = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        self._connected.clear()
        if self._connection is not None:
            try:
                await self._connection.close()
            except _ERRORS:
                pass
            self._connection = None
            self._channel = None


async def declare_topology(channel: aio_pika.abc.AbstractChannel) -> None:
    """Declare the work queues and their dead-letter queues (idempotent)."""
    for queue in QUEUES:
        await channel.declare_queue(queue, durable=True)
        await channel.declare_queue(dead_letter_queue(queue), durable=True)


async def ack(delivery: Delivery) -> bool:
    """Ack; False when the channel it came on is gone (the broker will redeliver it)."""
    try:
        await delivery.ack()
        return True
    except _ERRORS as exc:
        # The channel it came on is gone; RabbitMQ requeued it and delivers it again.
        log.debug("could not ack message %s (%r)", delivery.message_id, exc)
        return False


async def nack(delivery: Delivery, *, requeue: bool) -> bool:
    """Negative-ack; False when the channel it came on is gone."""
    try:
        await delivery.nack(requeue=requeue)
        return True
    except _ERRORS as exc:
        log.warning("could not nack message %s (%r)", delivery.message_id, exc)
        return False
