"""A TCP transport for aiormq that coalesces the frames written during one event-loop pass."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import aio_pika.abc
import aio_pika.connection
import aiormq.connection
import aiormq.exceptions


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


def make_connection(url: str, name: str) -> aio_pika.abc.AbstractConnection:
    """An unconnected aio-pika connection to `url`, coalescing writes unless it is TLS.

    What aio_pika.connect does, with our transport factory (it would put the factory into the
    URL's query instead).
    """
    factory = None if urlsplit(url).scheme == "amqps" else _CoalescingTCP()
    return _Connection(
        aio_pika.connection.make_url(url),
        client_properties={"connection_name": name},
        transport_factory=factory,
    )
