"""Modbus TCP reads with pymodbus's async client; pymodbus errors become DeviceErrors here.

A gateway is a host:port: a device with its own TCP port, or an RS485-to-TCP gateway with
several unit ids behind it. It answers one request at a time on a connection and accepts only a
few connections, so a worker holds at most the gateway's `max_connections` `DeviceLink`s to it
(`GatewayLinks`), and each link serves one job at a time: requests on one connection never
overlap, while other gateways are read concurrently. A link keeps its gateway's pauses (after
connecting, between requests), waits its timeout for each answer, and speaks its framing
(Modbus TCP, or RTU frames over the TCP socket).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException
from pymodbus.framer import FramerType

from emm.errors import BusyAnswer, NoAnswer, PermanentDeviceError, TransientDeviceError
from emm.messages import DEFAULT_GATEWAY, Gateway
from emm.modbus import (
    BIT_FUNCTION_CODES,
    GATEWAY_PATH_UNAVAILABLE,
    GATEWAY_TARGET_DEVICE_FAILED_TO_RESPOND,
    READ_COILS,
    READ_DISCRETE_INPUTS,
    READ_HOLDING_REGISTERS,
    READ_INPUT_REGISTERS,
    TRANSIENT_EXCEPTION_CODES,
    answer_violation,
    exception_name,
)

log = logging.getLogger(__name__)


class _DecodeFailures(logging.Filter):
    """Drops the event loop's traceback for an answer pymodbus could not decode (a false byte
    count): the read that waited for it names the violation itself, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, ModbusException)


logging.getLogger("asyncio").addFilter(_DecodeFailures())

# The gateway could not reach the unit: it did not answer, as after a timeout.
NO_ANSWER_CODES = frozenset({GATEWAY_PATH_UNAVAILABLE, GATEWAY_TARGET_DEVICE_FAILED_TO_RESPOND})
_FRAMERS = {"tcp": FramerType.SOCKET, "rtu-over-tcp": FramerType.RTU}


class DeviceLink:
    """One (re)connecting connection to a gateway, used by one job at a time (the gateway's
    `GatewayLinks` hands it out); `settings` are its gateway's pauses, timeout and framing."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout_s: float,
        connect_timeout_s: float,
        settings: Gateway = DEFAULT_GATEWAY,
    ) -> None:
        self.host = host
        self.port = port
        self.default_timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.settings = settings
        self.last_used = time.monotonic()
        self._client: AsyncModbusTcpClient | None = None
        self._ready_at = 0.0  # when the next request may go out (the gateway's pauses)
        # the last request's frame and the bytes received since, to name a protocol violation
        self._sent = b""
        self._received = b""

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def timeout_s(self) -> float:
        """Seconds to wait for one answer: the gateway's `request_timeout_ms`, else the
        worker's EMM_READ_TIMEOUT_S."""
        return self.settings.timeout_s(self.default_timeout_s)

    @property
    def is_open(self) -> bool:
        """Whether the link holds a connection (possibly one the device has since dropped)."""
        return self._client is not None

    async def _connected_client(self) -> AsyncModbusTcpClient:
        if self._client is not None and self._client.connected:
            return self._client
        self.close()
        # retries=0 and reconnect_delay=0: the worker owns retries (tenacity) and reconnects;
        # pymodbus's own would multiply with ours and outlive the tick.
        client = AsyncModbusTcpClient(
            self.host,
            port=self.port,
            framer=_FRAMERS[self.settings.framing],
            timeout=self.connect_timeout_s,
            retries=0,
            reconnect_delay=0,
            trace_packet=self._trace,
        )
        try:
            ok = await asyncio.wait_for(client.connect(), self.connect_timeout_s)
        except (TimeoutError, OSError, ModbusException) as exc:
            client.close()
            raise TransientDeviceError(
                f"cannot connect to {self.name}: {exc or type(exc).__name__}", code="unreachable"
            ) from None
        if not ok:
            client.close()
            raise TransientDeviceError(f"cannot connect to {self.name}", code="unreachable")
        self._client = client
        # many gateways drop or garble a request sent right after the connection opened
        self._ready_at = time.monotonic() + self.settings.pause_after_connect_ms / 1000
        return client

    def _trace(self, sending: bool, data: bytes) -> bytes:
        """pymodbus's view of the wire: keep the request and what answers it."""
        if sending:
            self._sent, self._received = data, b""
        elif data.startswith(self._received):
            self._received = data  # pymodbus passes its whole buffer, kept bytes first
        else:
            self._received += data  # the bytes before were taken (and dropped) as a frame
        return data

    def _violation(self, what: str) -> TransientDeviceError | None:
        """The protocol violation in the answer received so far, as our error (TCP framing
        only: an RTU answer carries no transaction to compare)."""
        if self.settings.framing != "tcp":
            return None
        found = answer_violation(self._sent, self._received)
        if found is None:
            return None
        return TransientDeviceError(
            f"{what}: protocol violation: {found}", code="protocol_violation"
        )

    async def read(
        self,
        function_code: int,
        address: int,
        count: int,
        unit_id: int,
        *,
        timeout_s: float | None = None,
    ) -> list[int]:
        """Read `count` registers (or bits) at `address`, waiting `timeout_s` (by default the
        gateway's timeout) for the answer; raises DeviceError subclasses."""
        self.last_used = time.monotonic()
        client = await self._connected_client()
        pause_s = self._ready_at - time.monotonic()
        if pause_s > 0:
            await asyncio.sleep(pause_s)
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        # pymodbus waits this long for each answer (it reads it on every request)
        client.ctx.comm_params.timeout_connect = timeout_s
        try:
            return await self._request(client, function_code, address, count, unit_id, timeout_s)
        finally:
            self.last_used = time.monotonic()
            self._ready_at = self.last_used + self.settings.pause_between_requests_ms / 1000

    async def _request(
        self,
        client: AsyncModbusTcpClient,
        function_code: int,
        address: int,
        count: int,
        unit_id: int,
        timeout_s: float,
    ) -> list[int]:
        call = {
            READ_COILS: client.read_coils,
            READ_DISCRETE_INPUTS: client.read_discrete_inputs,
            READ_HOLDING_REGISTERS: client.read_holding_registers,
            READ_INPUT_REGISTERS: client.read_input_registers,
        }[function_code]
        what = f"{self.name} unit {unit_id}: FC{function_code} read of {count} at {address}"
        try:
            # a safety net over pymodbus's own timeout; unlike wait_for it makes no task
            async with asyncio.timeout(timeout_s + 0.5):
                response = await call(address, count=count, device_id=unit_id)
        except TimeoutError:
            self.close()
            raise self._violation(what) or NoAnswer(
                f"{what}: no answer within {timeout_s:g} s"
            ) from None
        except ConnectionException as exc:
            self.close()
            raise self._violation(what) or TransientDeviceError(
                f"{what}: connection lost ({exc})", code="connection_lost"
            ) from None
        except ModbusException:
            # pymodbus reports a missing answer as ModbusIOException; the link may hold a late
            # answer now (which RTU framing could not tell from the next one), so start afresh.
            self.close()
            raise self._violation(what) or NoAnswer(
                f"{what}: no answer within {timeout_s:g} s"
            ) from None
        except OSError as exc:
            self.close()
            raise TransientDeviceError(f"{what}: {exc}", code="connection_lost") from None
        except RuntimeError as exc:
            # uvloop refuses a write to a transport the device has just closed
            self.close()
            raise TransientDeviceError(
                f"{what}: connection lost ({exc})", code="connection_lost"
            ) from None
        if response.function_code & 0x7F != function_code or (
            # pymodbus takes a false byte count as it comes
            not response.isError() and self._violation(what) is not None
        ):
            self.close()
            raise self._violation(what) or TransientDeviceError(
                f"{what}: protocol violation: function code {response.function_code} in the "
                f"answer to function code {function_code}",
                code="protocol_violation",
            )
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            message = f"{what}: Modbus exception {code} ({exception_name(code)})"
            if code in NO_ANSWER_CODES:
                raise NoAnswer(message, exception_code=code)
            if code in TRANSIENT_EXCEPTION_CODES:
                raise BusyAnswer(message, exception_code=code)
            raise PermanentDeviceError(message, exception_code=code)
        if function_code in BIT_FUNCTION_CODES:
            return [1 if b else 0 for b in response.bits[:count]]
        return list(response.registers)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class GatewayLinks:
    """A worker's connections to one gateway: at most its `max_connections`, made on first
    use, each handed to one job at a time (`acquire`), the others waiting in turn."""

    link_type: type[DeviceLink] = DeviceLink  # what a connection is (`emm read` records words)

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout_s: float,
        connect_timeout_s: float,
        settings: Gateway = DEFAULT_GATEWAY,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.settings = settings
        self._links: list[DeviceLink] = []
        self._idle: list[DeviceLink] = []
        self._waiters: deque[asyncio.Future[DeviceLink]] = deque()
        self._on_wait: set[Callable[[], None]] = set()

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def waiting(self) -> int:
        """How many jobs wait for a connection to this gateway."""
        return sum(1 for waiter in self._waiters if not waiter.done())

    @property
    def links(self) -> tuple[DeviceLink, ...]:
        """The connections made so far (open or closed since)."""
        return tuple(self._links)

    @contextmanager
    def on_wait(self, hook: Callable[[], None]) -> Iterator[None]:
        """Call `hook` whenever a job starts waiting for a connection, within the block."""
        self._on_wait.add(hook)
        try:
            yield
        finally:
            self._on_wait.discard(hook)

    def configure(self, settings: Gateway) -> None:
        """Take the gateway's settings as the newest job carries them: idle links follow at
        once, links in use when they are given back."""
        if settings == self.settings:
            return
        self.settings = settings
        for link in list(self._idle):
            self._renew(link)
        self._wake()

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[DeviceLink]:
        """A connection to the gateway for the caller alone, once one is free."""
        link = await self._take()
        try:
            yield link
        finally:
            self._give(link)

    async def _take(self) -> DeviceLink:
        if not self._waiters:
            link = self._free()
            if link is not None:
                return link
        waiter: asyncio.Future[DeviceLink] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        for hook in list(self._on_wait):
            hook()
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._give(waiter.result())  # handed over just as the caller gave up
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def _free(self) -> DeviceLink | None:
        """An idle link, or a new one while the gateway allows more; None when all are busy."""
        if self._idle:
            return self._idle.pop()
        if len(self._links) < self.settings.max_connections:
            link = self.link_type(
                self.host,
                self.port,
                timeout_s=self.timeout_s,
                connect_timeout_s=self.connect_timeout_s,
                settings=self.settings,
            )
            self._links.append(link)
            return link
        return None

    def _give(self, link: DeviceLink) -> None:
        self._idle.append(link)
        self._renew(link)
        self._wake()

    def _renew(self, link: DeviceLink) -> None:
        """Bring an idle link in line with the settings: closed if the gateway now allows
        fewer connections, reconnected later if its framing changed."""
        if len(self._links) > self.settings.max_connections:
            link.close()
            self._idle.remove(link)
            self._links.remove(link)
        elif link.settings != self.settings:
            if link.settings.framing != self.settings.framing:
                link.close()
            link.settings = self.settings

    def _wake(self) -> None:
        """Hand free links to the jobs waiting, first come first served."""
        while self._waiters:
            if self._waiters[0].done():
                self._waiters.popleft()  # cancelled
                continue
            link = self._free()
            if link is None:
                return
            self._waiters.popleft().set_result(link)

    def close_idle(self, cutoff: float) -> int:
        """Close the idle connections unused since `cutoff`; returns how many were closed."""
        stale = [link for link in self._idle if link.is_open and link.last_used < cutoff]
        for link in stale:
            link.close()
        return len(stale)

    def close(self) -> None:
        for link in self._links:
            link.close()


class DevicePool:
    """The gateways of one worker process, by host:port, made on first use; a connection is
    closed when idle and opened again by its next read."""

    def __init__(self, *, timeout_s: float, connect_timeout_s: float, idle_close_s: float) -> None:
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.idle_close_s = idle_close_s
        self._gateways: dict[tuple[str, int], GatewayLinks] = {}

    def gateway(self, host: str, port: int) -> GatewayLinks:
        """The connections to `host`:`port`, shared by every unit id behind it."""
        key = (host, port)
        gateway = self._gateways.get(key)
        if gateway is None:
            gateway = self._gateways[key] = GatewayLinks(
                host, port, timeout_s=self.timeout_s, connect_timeout_s=self.connect_timeout_s
            )
        return gateway

    def close_idle(self) -> int:
        """Close the connections unused for `idle_close_s`; returns how many were closed.

        The gateways themselves stay: the devices behind a gateway hold it, and one
        `GatewayLinks` per host:port is what keeps their requests within its connections.
        """
        cutoff = time.monotonic() - self.idle_close_s
        return sum(gateway.close_idle(cutoff) for gateway in self._gateways.values())

    def close(self) -> None:
        for gateway in self._gateways.values():
            gateway.close()
        self._gateways.clear()
