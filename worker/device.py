"""The devices a worker reads: one `Device` per (host, port, unit id), made on first use.

A device owns what the worker learns about it across ticks: its `Health` (failed ticks, offline
backoff, whether it answered last) and its `Holes` (the learned splits of requests it refuses in
part). Its connections belong to its gateway: they are per host:port and shared by every unit id
behind it, so the units of one gateway hold the same `GatewayLinks` (and `GatewayLoad`, its
measured load) and their requests stay within the gateway's connections.

Meter ids do not name devices: two meters (two rows, or one row renamed) at the same address are
the same device, with one health and one set of holes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from emm.messages import Job, Meter
from worker.budget import Budget, GatewayLoad
from worker.health import Health, OfflinePolicy
from worker.holes import HOLE_MEMORY_TTL_S, Holes
from worker.modbus import DevicePool, GatewayLinks

DeviceKey = tuple[str, int, int]
GatewayAddress = tuple[str, int]


def device_key(meter: Meter) -> DeviceKey:
    """The device `meter` is read from: (host, port, unit id)."""
    return (meter.host, meter.port, meter.unit_id)


@dataclass(slots=True)
class Problem:
    """What went wrong with a device's reads, tick after tick, since `since_ms`: logged when it
    starts, when it changes and when it ends, not every tick."""

    error_code: str
    failed: frozenset[str]  # registers not read
    since_ms: int
    ticks: int = 1


@dataclass(eq=False, slots=True)
class Device:
    """One Modbus device: its gateway's connections and load, its health and learned holes,
    and the problem its reads have now (None while they are fine)."""

    key: DeviceKey
    gateway: GatewayLinks
    health: Health
    holes: Holes
    load: GatewayLoad
    problem: Problem | None = None

    @property
    def unit_id(self) -> int:
        return self.key[2]


class Devices:
    """The devices of one worker process, by (host, port, unit id), with their gateways'
    connections and loads."""

    def __init__(
        self,
        links: DevicePool,
        policy: OfflinePolicy,
        *,
        budget: Budget | None = None,
        hole_ttl_s: float = HOLE_MEMORY_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.links = links
        self.policy = policy
        self.budget = budget or Budget()
        self.hole_ttl_s = hole_ttl_s
        self.clock = clock
        self._devices: dict[DeviceKey, Device] = {}

    def get(self, meter: Meter) -> Device:
        """The device `meter` is read from, made (with its gateway's) on first use."""
        key = device_key(meter)
        device = self._devices.get(key)
        if device is None:
            device = self._devices[key] = Device(
                key,
                self.links.gateway(meter.host, meter.port),
                Health(self.policy),
                Holes(self.hole_ttl_s, self.clock),
                self.budget.gateway(meter.host, meter.port),
            )
        return device

    def states(self) -> tuple[int, int]:
        """How many devices answered on their last read, and how many are offline."""
        up = offline = 0
        for device in self._devices.values():
            health = device.health
            offline += health.offline
            up += health.failed_ticks == 0
        return up, offline

    def note_late(self, job: Job) -> None:
        """Count `job`, dropped as late, in its gateway's load."""
        self.budget.gateway(job.meter.host, job.meter.port).late(job)

    def drop(self, gateways: Callable[[GatewayAddress], bool]) -> None:
        """Forget the devices behind the gateways `gateways` picks (health, holes) and close
        those gateways' connections: another worker reads them now, and learns them afresh."""
        dropped = [key for key in self._devices if gateways((key[0], key[1]))]
        for key in dropped:
            self._devices.pop(key).gateway.close()

    def close_idle(self) -> int:
        """Close the gateways' connections unused for a while; returns how many were closed."""
        return self.links.close_idle()

    def close(self) -> None:
        """Close every connection (at shutdown)."""
        self.links.close()
