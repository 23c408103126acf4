"""One `Device` per (host, port, unit id): its gateway's link, its health and its learned holes."""

from __future__ import annotations

import asyncio

import pytest

from emm.codec import RequestDecoder
from emm.messages import Meter
from emm.registers import DataType, Register
from worker.device import Devices, device_key
from worker.health import OfflinePolicy
from worker.modbus import DeviceLink, DevicePool

pytestmark = pytest.mark.timeout(10)

PERIOD_MS = 10_000
REGS = tuple(Register(f"r{a}", a, 3, DataType.UINT16) for a in (0, 1, 2, 3))


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def devices(clock: Clock | None = None, idle_close_s: float = 60.0) -> Devices:
    links = DevicePool(timeout_s=1.0, connect_timeout_s=1.0, idle_close_s=idle_close_s)
    policy = OfflinePolicy(offline_after_ticks=2, backoff_max_s=60)
    return Devices(links, policy, hole_ttl_s=100.0, clock=clock or Clock())


def meter(id_: int, port: int = 502, unit: int = 1, host: str = "192.0.2.1") -> Meter:
    return Meter(id_, host, port, unit, "sdm630")


def test_one_device_per_address_whatever_the_meter_id() -> None:
    registry = devices()
    first = registry.get(meter(1))
    assert registry.get(meter(2)) is first  # another row for the same device
    assert first.key == device_key(meter(1)) == ("192.0.2.1", 502, 1)
    assert first.unit_id == 1
    assert registry.get(meter(1, unit=2)) is not first
    assert registry.get(meter(1, host="192.0.2.2")) is not first


def test_the_units_behind_one_gateway_share_its_connections_and_load() -> None:
    registry = devices()
    unit1, unit2 = registry.get(meter(1, unit=1)), registry.get(meter(2, unit=2))
    assert unit1 is not unit2
    assert unit1.gateway is unit2.gateway
    assert unit1.load is unit2.load
    assert unit1.gateway.name == "192.0.2.1:502"
    assert registry.get(meter(3, port=503)).gateway is not unit1.gateway
    assert registry.get(meter(3, port=503)).load is not unit1.load


def test_health_is_per_device() -> None:
    registry = devices()
    dead, alive = meter(1, unit=1), meter(2, unit=2)
    for n in range(2):
        registry.get(dead).health.record(dead, n * PERIOD_MS, PERIOD_MS, False, "timeout")
        registry.get(alive).health.record(alive, n * PERIOD_MS, PERIOD_MS, True, "")
    assert registry.get(dead).health.offline
    assert registry.get(dead).health.skip_reason(2 * PERIOD_MS) is not None
    assert not registry.get(alive).health.offline
    assert registry.get(alive).health.skip_reason(2 * PERIOD_MS) is None
    # the same device under another meter id is offline too
    assert registry.get(meter(9, unit=1)).health.offline


def test_holes_are_per_device_and_expire() -> None:
    clock = Clock()
    registry = devices(clock)
    planned = RequestDecoder.build(0, 4, REGS)
    part = RequestDecoder.build(0, 2, REGS[:2])
    holed = registry.get(meter(1, unit=1))
    holed.holes.learn(planned, [part], {"r2": "refused", "r3": "refused"})
    assert holed.holes.get(planned) is not None
    assert holed.holes.get(planned).parts == (part,)
    assert holed.holes.unreadable() == {"r2", "r3"}
    other = registry.get(meter(2, unit=2))
    assert other.holes.get(planned) is None
    assert other.holes.unreadable() == set()
    clock.now += 100.0
    assert holed.holes.get(planned) is not None  # still within its time to live
    clock.now += 0.5
    assert holed.holes.get(planned) is None  # tried as planned again
    assert holed.holes.unreadable() == set()


class FakeClient:
    connected = True

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_idle_connections_close_but_the_devices_keep_their_gateway() -> None:
    registry = devices(idle_close_s=1.0)
    device = registry.get(meter(1))
    gateway = device.gateway

    async def one_link() -> DeviceLink:
        async with gateway.acquire() as link:
            return link

    link = asyncio.run(one_link())
    client = FakeClient()
    link._client = client  # type: ignore[assignment]
    assert registry.close_idle() == 0  # just used
    link.last_used -= 2.0
    assert registry.close_idle() == 1
    assert client.closed
    assert not link.is_open
    assert registry.close_idle() == 0  # nothing left open
    assert registry.get(meter(1, unit=2)).gateway is gateway  # still the gateway's links
    assert gateway.links == (link,)
