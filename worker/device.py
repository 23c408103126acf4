"""The devices a worker reads: one `Device` per (host, port, unit id), made on first use.

A device owns what the worker learns about it across ticks: its `Health` (failed ticks, offline
backoff) and its `Holes` (the learned splits of requests it refuses in part). Its link belongs
to its gateway: the connection is per host:port and shared by every unit id behind it, so the
units of one gateway hold the same `DeviceLink` and their requests never overlap.

Meter ids do not name devices: two meters (two rows, or one row renamed) at the same address are
the same device, with one health and one set of holes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from emm.messages import Meter
from worker.health import Health, OfflinePolicy
from worker.holes import HOLE_MEMORY_TTL_S, Holes
from worker.modbus import DeviceLink, DevicePool

DeviceKey = tuple[str, int, int]
Gateway = tuple[str, int]


def device_key(meter: Meter) -> DeviceKey:
    """The device `meter` is read from: (host, port, unit id)."""
    return (meter.host, meter.port, meter.unit_id)


@dataclass(eq=False, slots=True)
class Device:
    """One Modbus device: its gateway's link, its health and its learned holes."""

    key: DeviceKey
    link: DeviceLink
    health: Health
    holes: Holes

    @property
    def unit_id(self) -> int:
        return self.key[2]


class Devices:
    """The devices of one worker process, by (host, port, unit id), with their gateways' links."""

    def __init__(
        self,
        links: DevicePool,
        policy: OfflinePolicy,
        *,
        hole_ttl_s: float = HOLE_MEMORY_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.links = links
        self.policy = policy
        self.hole_ttl_s = hole_ttl_s
        self.clock = clock
        self._devices: dict[DeviceKey, Device] = {}

    def get(self, meter: Meter) -> Device:
        """The device `meter` is read from, made (with its gateway's link) on first use."""
        key = device_key(meter)
        device = self._devices.get(key)
        if device is None:
            device = self._devices[key] = Device(
                key,
                self.links.link(meter.host, meter.port),
                Health(self.policy),
                Holes(self.hole_ttl_s, self.clock),
            )
        return device

    def drop(self, gateways: Callable[[Gateway], bool]) -> None:
        """Forget the devices behind the gateways `gateways` picks (health, holes) and close
        those gateways' connections: another worker reads them now, and learns them afresh."""
        dropped = [key for key in self._devices if gateways((key[0], key[1]))]
        for key in dropped:
            self._devices.pop(key).link.close()

    def close_idle(self) -> int:
        """Close the gateways' connections unused for a while; returns how many were closed."""
        return self.links.close_idle()

    def close(self) -> None:
        """Close every connection (at shutdown)."""
        self.links.close()
