"""A lease on a vhost: an exclusive queue, which RabbitMQ lets one connection hold at a time
and deletes when that connection ends.

The scheduler holds `SCHEDULER_LEASE` on the connection it publishes on, so a second scheduler
started by mistake cannot publish: its declaration is refused (RESOURCE_LOCKED) until the
first one's connection is gone, killed or closed. The lease dies with the connection, so one
that lost its connection publishes nothing more until it takes the lease again.
"""

from __future__ import annotations

import aio_pika.abc
import aiormq.exceptions

from broker.connection import Broker
from broker.exceptions import LIBRARY_ERRORS, convert
from emm.errors import BrokerError

SCHEDULER_LEASE = "emm.scheduler.lease"


class Lease:
    """The exclusive queue `queue` held on `broker`'s connection, or not."""

    def __init__(self, broker: Broker, queue: str = SCHEDULER_LEASE) -> None:
        self.broker = broker
        self.queue = queue
        self.held = False
        # asked again on every new connection, before anything is published on it
        broker.connect_callbacks.append(self._on_connect)
        broker.disconnect_callbacks.append(self._lost)

    def _lost(self) -> None:
        self.held = False

    async def _on_connect(self) -> None:
        self.held = False
        connection = self.broker._connection
        if connection is not None:
            self.held = await self._declare(connection)

    async def take(self) -> bool:
        """Hold the lease if no other connection does; whether this connection holds it.
        Raises BrokerError when RabbitMQ cannot be asked (not connected)."""
        if self.held and self.broker.connected:
            return True
        connection = self.broker._connection
        if connection is None or not self.broker.connected:
            raise BrokerError(f"cannot ask for the lease {self.queue}: not connected")
        self.held = await self._declare(connection)
        return self.held

    async def _declare(self, connection: aio_pika.abc.AbstractConnection) -> bool:
        """Declare the exclusive queue on `connection`: whether it is ours."""
        try:
            # on a channel of its own: a refusal closes the channel it was asked on
            channel = await connection.channel(publisher_confirms=False)
            try:
                await channel.declare_queue(self.queue, exclusive=True, durable=False)
            finally:
                if not channel.is_closed:
                    await channel.close()
        except aiormq.exceptions.ChannelLockedResource:
            return False
        except LIBRARY_ERRORS as exc:
            raise convert(exc, f"cannot take the lease {self.queue}") from exc
        return True
