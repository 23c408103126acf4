"""Modbus TCP reads with pymodbus's async client; pymodbus errors become DeviceErrors here.

One `DeviceLink` per (host, port): a device (or a gateway with several unit ids behind it)
answers one request at a time and many accept only one or two connections, so reads through a
link are serialised by its lock while other devices are read concurrently.
"""

from __future__ import annotations

import asyncio
import logging
import time

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException

from emm.errors import PermanentDeviceError, TransientDeviceError
from emm.modbus import (
    BIT_FUNCTION_CODES,
    READ_COILS,
    READ_DISCRETE_INPUTS,
    READ_HOLDING_REGISTERS,
    READ_INPUT_REGISTERS,
    TRANSIENT_EXCEPTION_CODES,
    exception_name,
)

log = logging.getLogger(__name__)


class DeviceLink:
    """A (re)connecting client for one host:port; use `async with link.lock` around reads."""

    def __init__(self, host: str, port: int, *, timeout_s: float, connect_timeout_s: float) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.lock = asyncio.Lock()
        self.last_used = time.monotonic()
        self._client: AsyncModbusTcpClient | None = None

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"

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
            timeout=self.timeout_s,
            retries=0,
            reconnect_delay=0,
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
        return client

    async def read(self, function_code: int, address: int, count: int, unit_id: int) -> list[int]:
        """Read `count` registers (or bits) at `address`; raises DeviceError subclasses."""
        self.last_used = time.monotonic()
        client = await self._connected_client()
        call = {
            READ_COILS: client.read_coils,
            READ_DISCRETE_INPUTS: client.read_discrete_inputs,
            READ_HOLDING_REGISTERS: client.read_holding_registers,
            READ_INPUT_REGISTERS: client.read_input_registers,
        }[function_code]
        what = f"{self.name} unit {unit_id}: FC{function_code} read of {count} at {address}"
        try:
            # a safety net over pymodbus's own timeout; unlike wait_for it makes no task
            async with asyncio.timeout(self.timeout_s + 0.5):
                response = await call(address, count=count, device_id=unit_id)
        except TimeoutError as exc:
            self.close()
            raise TransientDeviceError(
                f"{what}: no answer within {self.timeout_s:g} s", code="timeout"
            ) from exc
        except ConnectionException as exc:
            self.close()
            raise TransientDeviceError(
                f"{what}: connection lost ({exc})", code="connection_lost"
            ) from None
        except ModbusException:
            # pymodbus reports a missing answer as ModbusIOException; the link may hold a late
            # answer now, so start afresh.
            self.close()
            raise TransientDeviceError(
                f"{what}: no answer within {self.timeout_s:g} s", code="timeout"
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
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            name = exception_name(code)
            message = f"{what}: Modbus exception {code} ({name})"
            if code in TRANSIENT_EXCEPTION_CODES:
                raise TransientDeviceError(message, code=f"modbus_exception_{code}")
            raise PermanentDeviceError(message, exception_code=code)
        if function_code in BIT_FUNCTION_CODES:
            return [1 if b else 0 for b in response.bits[:count]]
        registers = list(response.registers)
        return registers

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class DevicePool:
    """The links of one worker process, one per host:port, created on first use; a link's
    connection is closed when idle and opened again by its next read."""

    def __init__(self, *, timeout_s: float, connect_timeout_s: float, idle_close_s: float) -> None:
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.idle_close_s = idle_close_s
        self._links: dict[tuple[str, int], DeviceLink] = {}

    def link(self, host: str, port: int) -> DeviceLink:
        key = (host, port)
        link = self._links.get(key)
        if link is None:
            link = DeviceLink(
                host, port, timeout_s=self.timeout_s, connect_timeout_s=self.connect_timeout_s
            )
            self._links[key] = link
        return link

    def close_idle(self) -> int:
        """Close the connections unused for `idle_close_s`; returns how many were closed.

        The links themselves stay: the devices behind a gateway hold its link, and one link
        per host:port is what keeps their requests from overlapping.
        """
        cutoff = time.monotonic() - self.idle_close_s
        stale = [
            link
            for link in self._links.values()
            if link.is_open and link.last_used < cutoff and not link.lock.locked()
        ]
        for link in stale:
            link.close()
        return len(stale)

    def close(self) -> None:
        for link in self._links.values():
            link.close()
        self._links.clear()
