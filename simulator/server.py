"""The Modbus TCP server: pymodbus's server with a datastore that asks the virtual devices.

Every read is answered from the device models at the time of the request; any write is refused
with exception 1 (ILLEGAL FUNCTION) and counted, since the system must never write to a device.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusTcpServer

log = logging.getLogger(__name__)

ANY_UNIT = -1


class Device(Protocol):
    def read(self, function_code: int, address: int, count: int, t_s: float) -> list[int] | int: ...


class SimulatedContext(ModbusServerContext):
    """Routes each request to the device at its unit id (or to the catch-all device)."""

    def __init__(self, devices: dict[int, Device], clock: Callable[[], float] = time.time) -> None:
        # The parent's constructor builds pymodbus's own datastore (and warns that it is
        # deprecated); this context answers every request itself, so it is not called.
        self.devices = devices
        self.clock = clock
        self.old_simulator = True
        self.simdevices = []
        self.reads = 0
        self.writes_refused = 0

    def _device(self, device_id: int) -> Device:
        device = self.devices.get(device_id) or self.devices.get(ANY_UNIT)
        if device is None:
            raise NoSuchIdException(f"no virtual device at unit id {device_id}")
        return device

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        device = self._device(device_id)
        self.reads += 1
        result = device.read(func_code, address, count, self.clock())
        if isinstance(result, int):
            return ExcCodes(result)
        if func_code in (1, 2):
            return [bool(v) for v in result]
        return result

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: Sequence[int] | Sequence[bool]
    ) -> ExcCodes | None:
        self.writes_refused += 1
        log.warning(
            "refused a write (function code %d at %d, unit %d)", func_code, address, device_id
        )
        return ExcCodes.ILLEGAL_FUNCTION

    def device_ids(self) -> list[int]:
        return [unit for unit in self.devices if unit != ANY_UNIT]


def make_server(context: SimulatedContext, host: str, port: int) -> ModbusTcpServer:
    """A server for `context` listening on host:port (start it with `await serve_forever()`)."""
    return ModbusTcpServer(context, address=(host, port))
