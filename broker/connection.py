"""One AMQP connection: publishing with confirms, consuming with manual acks, settling.

Built on aio-pika so a worker shares one event loop between AMQP and pymodbus's async client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aio_pika
import aio_pika.abc
from tenacity import stop_after_attempt, stop_never

from broker.exceptions import LIBRARY_ERRORS, Endpoint, connect_error, map_exceptions
from broker.topology import dead_letter_queue, declare_topology
from broker.transport import make_connection
from emm import retry
from emm.errors import BrokerError, Misconfigured
from emm.fate import Outcome, decide, is_bug, reason
from emm.log import error_code

log = logging.getLogger(__name__)

Delivery = aio_pika.abc.AbstractIncomingMessage
Handler = Callable[[Delivery], Awaitable[None]]


class Broker:
    """One AMQP connection with a confirming channel, reopened whenever it is lost.

    Reconnection is ours rather than aio-pika's robust connection: every close we did not ask
    for (a killed broker, a clean broker shutdown, a channel error) leads to a fresh connection,
    the queues declared again, every resumed consumer restarted and the connect callbacks run,
    waiting as `retry.BROKER_RECONNECT` says in between. While disconnected `publish` fails at
    once with BrokerError, so callers decide to retry.

    An outage is logged when it starts and when it ends (`retry.Outage`). A refused login or a
    vhost the user cannot open is Misconfigured: at start `connect` raises it (the service
    stops); after a lost connection it is waited out like an outage, since a restarted broker
    may not have loaded its users yet.
    """

    def __init__(self, url: str, *, prefetch: int = 0, name: str = "emm") -> None:
        self.url = url
        self.prefetch = prefetch
        self.name = name
        self.endpoint = Endpoint.from_url(url)
        self.outage = retry.Outage(str(self.endpoint), log)
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._exchanges: dict[str, aio_pika.abc.AbstractExchange] = {}
        # queue -> handler, consumed again after every reconnection
        self._consumers: dict[str, Handler] = {}
        self._tags: dict[str, str] = {}  # queue -> consumer tag on the current channel
        self._connected = asyncio.Event()
        self._closing = False
        self._reconnecting: asyncio.Task[None] | None = None
        self.reconnects = 0
        # Run after every (re)connection, before it counts as connected; may consume.
        self.connect_callbacks: list[Callable[[], Awaitable[None]]] = []
        # Run when the connection is lost (not when closed on purpose).
        self.disconnect_callbacks: list[Callable[[], None]] = []

    async def _open(self) -> None:
        connection = make_connection(self.url, self.name)
        try:
            await connection.connect(timeout=10)
        except LIBRARY_ERRORS as exc:
            raise connect_error(exc, self.endpoint) from exc
        try:
            try:
                await declare_topology(connection)
                channel = await connection.channel(publisher_confirms=True)
            except LIBRARY_ERRORS as exc:
                raise connect_error(exc, self.endpoint) from exc
            with map_exceptions("cannot set up the RabbitMQ channel"):
                if self.prefetch:
                    # per consumer: a worker's limit is per shard queue it owns (RabbitMQ's
                    # global, per-channel limit is much slower to enforce)
                    await channel.set_qos(prefetch_count=self.prefetch)
                self._connection, self._channel = connection, channel
                self._exchanges, self._tags = {}, {}
                for queue, handler in self._consumers.items():
                    await self._consume(queue, handler)
            for callback in self.connect_callbacks:
                await callback()
        except BaseException:
            self._connection = self._channel = None
            await _close(connection)
            raise
        connection.close_callbacks.add(self._on_close)
        channel.close_callbacks.add(self._on_close)
        self._connected.set()

    def _on_close(self, _sender: object, exc: BaseException | None = None) -> None:
        if self._closing or not self._connected.is_set():
            return
        self._connected.clear()
        self.outage.failed(connect_error(exc, self.endpoint) if exc else "connection closed")
        for callback in self.disconnect_callbacks:
            callback()
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        old = self._connection
        self._connection = self._channel = None
        if old is not None and not old.is_closed:
            await _close(old)
        if self._closing:
            return
        try:
            await retry.BROKER_RECONNECT.call(
                self._open,
                stop=lambda _state: self._closing,
                on_retry=lambda exc, _wait_s: log.debug("%s still unreachable (%s)", self, exc),
            )
        except (BrokerError, Misconfigured):
            return  # closed while waiting
        self.reconnects += 1
        self.outage.over()

    def __str__(self) -> str:
        return str(self.endpoint)

    async def connect(self, *, retry_forever: bool = True) -> None:
        """Connect and declare the queues, waiting for the broker to come up if it is not yet.

        Raises BrokerError if it cannot connect and `retry_forever` is false; Misconfigured
        at once when RabbitMQ refuses the login or the vhost; and ConfigError if a queue cannot
        be declared as this version needs (see `broker.topology`).
        """
        await retry.BROKER_CONNECT.call(
            self._open,
            stop=stop_never if retry_forever else stop_after_attempt(1),
            on_retry=self.outage.failed,
        )
        self.outage.over()
        log.info("connected to RabbitMQ as %s", self.name)

    @property
    def connected(self) -> bool:
        """Whether the connection to RabbitMQ is up right now."""
        return self._connected.is_set()

    @property
    def channel(self) -> aio_pika.abc.AbstractChannel:
        if self._channel is None or self._channel.is_closed:
            raise BrokerError("not connected to RabbitMQ")
        return self._channel

    async def publish(
        self,
        routing_key: str,
        body: bytes,
        *,
        exchange: str = "",
        expiration_s: float | None = None,
        headers: dict[str, Any] | None = None,
        message_id: str | None = None,
    ) -> None:
        """Publish a persistent message and return once the broker confirmed it; to the queue
        `routing_key` by default, or through `exchange`. A message no queue takes is refused."""
        message = aio_pika.Message(
            body,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            content_type="application/json",
            expiration=expiration_s,
            headers=headers,
            message_id=message_id,
        )
        channel = self.channel
        with map_exceptions(f"publish to {exchange or routing_key} not confirmed"):
            target = self._exchanges.get(exchange)
            if target is None:
                target = channel.default_exchange
                if exchange:
                    target = await channel.get_exchange(exchange, ensure=False)
                self._exchanges[exchange] = target
            await target.publish(message, routing_key=routing_key, timeout=30)

    async def consume(self, queue: str, handler: Handler, *, resume: bool = True) -> None:
        """Deliver each message of `queue` to `handler` (which must settle it); also after
        every reconnection unless `resume` is false (the caller then consumes again itself,
        from a connect callback)."""
        if resume:
            self._consumers[queue] = handler
        _ = self.channel  # fails at once when not connected
        with map_exceptions(f"cannot consume {queue}"):
            await self._consume(queue, handler)

    async def _consume(self, queue: str, handler: Handler) -> None:
        assert self._channel is not None
        q = await self._channel.get_queue(queue, ensure=False)
        self._tags[queue] = await q.consume(handler, no_ack=False)

    async def cancel(self, queue: str) -> None:
        """Stop consuming `queue` (RabbitMQ then gives its single active consumer's place to
        the next in line); deliveries not yet settled may still be acked or nacked."""
        self._consumers.pop(queue, None)
        tag = self._tags.pop(queue, None)
        if tag is None:
            return
        channel = self.channel
        with map_exceptions(f"cannot cancel the consumer of {queue}"):
            q = await channel.get_queue(queue, ensure=False)
            await q.cancel(tag)

    async def consumer_count(self, queue: str) -> int:
        """How many consumers `queue` has (with single active consumer: active and waiting)."""
        channel = self.channel
        with map_exceptions(f"cannot look at {queue}"):
            declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.consumer_count or 0

    async def settle(
        self,
        queue: str,
        delivery: Delivery,
        error: BaseException | None,
        about: Mapping[str, object] | None = None,
    ) -> None:
        """Ack, requeue or dead-letter `delivery` of `queue` as `emm.fate.decide` says for
        `error`. A dead letter is logged once, with the reason (RabbitMQ keeps the message as
        it came, so the reason is in this line only) and the log context `about` (`emm.log`)."""
        outcome = decide(error)
        if outcome is Outcome.ACK:
            await ack(delivery)
        elif outcome is Outcome.REQUEUE:
            await nack(delivery, requeue=True)
        else:
            assert error is not None
            log.error(
                "%s: message %s dead-lettered to %s: %s",
                queue,
                delivery.message_id or f"#{delivery.delivery_tag} (no id)",
                dead_letter_queue(queue),
                reason(error),
                exc_info=error if is_bug(error) else None,
                extra={**(about or {}), "error_code": error_code(error)},
            )
            await nack(delivery, requeue=False)

    async def close(self) -> None:
        self._closing = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        self._connected.clear()
        if self._connection is not None:
            await _close(self._connection)
            self._connection = None
            self._channel = None


async def _close(connection: aio_pika.abc.AbstractConnection) -> None:
    try:
        await connection.close()
    except LIBRARY_ERRORS:
        pass  # going away already


async def ack(delivery: Delivery) -> bool:
    """Ack; False when the channel it came on is gone (the broker will redeliver it)."""
    try:
        await delivery.ack()
        return True
    except LIBRARY_ERRORS as exc:
        # The channel it came on is gone; RabbitMQ requeued it and delivers it again.
        log.debug("could not ack message %s (%r)", delivery.message_id, exc)
        return False


async def nack(delivery: Delivery, *, requeue: bool) -> bool:
    """Negative-ack (`requeue=False` dead-letters); False when the channel it came on is gone."""
    try:
        await delivery.nack(requeue=requeue)
        return True
    except LIBRARY_ERRORS as exc:
        log.warning("could not nack message %s (%r)", delivery.message_id, exc)
        return False
