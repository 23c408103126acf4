"""A TCP proxy that notes when each connection opens and when each request arrives, so a test
can see a gateway's pacing as the device would: the spacing of the requests on the wire."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field


@dataclass
class Tapped:
    """One connection through the tap: when it opened, and when each request came (monotonic)."""

    opened: float
    requests: list[float] = field(default_factory=list)


class Tap:
    """Forwards 127.0.0.1:`port` to `target`; `connections` holds what it saw, `peak` the
    most connections open at once."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.connections: list[Tapped] = []
        self.open = 0
        self.peak = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> Tap:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for pipe in self._pipes:
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        tapped = Tapped(time.monotonic())
        self.connections.append(tapped)
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            device_r, device_w = await asyncio.open_connection(*self.target)
            up = asyncio.create_task(self._pipe(client_r, device_w, tapped))
            down = asyncio.create_task(self._pipe(device_r, client_w, None))
            self._pipes |= {up, down}
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            for task in (up, down):
                task.cancel()
            for writer in (client_w, device_w):
                writer.close()
        finally:
            self.open -= 1

    @staticmethod
    async def _pipe(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tapped: Tapped | None
    ) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await reader.read(4096):
                if tapped is not None:
                    tapped.requests.append(time.monotonic())  # one request per write
                writer.write(data)
                await writer.drain()
