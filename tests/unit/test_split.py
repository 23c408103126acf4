"""Splitting a merged read that crosses a hole (worker.holes.split_read), with a fake device."""

from __future__ import annotations

import asyncio

import pytest

from emm.errors import PermanentDeviceError
from emm.planner import ReadRequest
from emm.registers import DataType, Register
from worker.holes import MAX_SPLIT_REQUESTS, SplitAbandoned, SplitBudget, split_halves, split_read

pytestmark = pytest.mark.timeout(10)


class FakeDevice:
    """Answers exception 2 for any read touching an address outside `mapped`."""

    def __init__(self, mapped: set[int], code: int = 2) -> None:
        self.mapped = mapped
        self.code = code
        self.requests: list[tuple[int, int]] = []

    async def read(self, request: ReadRequest) -> list[int]:
        self.requests.append((request.address, request.count))
        if any(a not in self.mapped for a in range(request.address, request.end)):
            raise PermanentDeviceError(f"exception at {request.address}", exception_code=self.code)
        return list(range(request.address, request.end))


def regs(*addresses: int) -> tuple[Register, ...]:
    return tuple(Register(f"r{a}", a, 3, DataType.UINT16) for a in addresses)


@pytest.mark.parametrize(
    ("mapped", "addresses", "parts", "unreadable", "requests"),
    [
        # all readable: one request
        ({0, 1, 2, 3}, (0, 1, 3), [(0, 4)], [], [(0, 4)]),
        # a gap address (2) is not mapped: the halves read
        (
            {0, 1, 3},
            (0, 1, 3),
            [(0, 1), (1, 1), (3, 1)],
            [],
            [(0, 4), (0, 1), (1, 3), (1, 1), (3, 1)],
        ),
        # a register itself is refused
        ({0, 1, 3}, (0, 3, 5), [(0, 1), (3, 1)], ["r5"], [(0, 6), (0, 1), (3, 3), (3, 1), (5, 1)]),
        # nothing readable
        (set(), (0, 1), [], ["r0", "r1"], [(0, 2), (0, 1), (1, 1)]),
    ],
)
def test_split_keeps_what_reads_and_names_what_does_not(
    mapped, addresses, parts, unreadable, requests
) -> None:
    device = FakeDevice(mapped)
    got, bad = asyncio.run(split_read(device.read, 3, regs(*addresses)))
    assert [(d.start, d.count) for d, _words in got] == parts
    assert sorted(bad) == unreadable
    assert device.requests == requests
    values = {}
    for decoder, words in got:
        values.update(decoder.decode(words)[0])
    assert values == {f"r{a}": float(a) for a in addresses if f"r{a}" not in bad}


def test_other_exceptions_are_not_split() -> None:
    device = FakeDevice(set(), code=4)
    with pytest.raises(PermanentDeviceError):
        asyncio.run(split_read(device.read, 3, regs(0, 1)))
    assert device.requests == [(0, 2)]


def test_a_split_stops_at_its_request_cap() -> None:
    # Every other register refused: bisecting 120 registers would take some 240 requests.
    addresses = tuple(range(0, 240, 2))
    device = FakeDevice(set(range(0, 240, 4)))
    with pytest.raises(SplitAbandoned) as raised:
        asyncio.run(split_halves(device.read, 3, regs(*addresses)))
    assert len(device.requests) == MAX_SPLIT_REQUESTS
    assert str(raised.value).startswith(
        f"hole split abandoned after {MAX_SPLIT_REQUESTS} requests (at most {MAX_SPLIT_REQUESTS})"
    )
    assert raised.value.code == "hole_split_abandoned"


def test_a_split_stops_at_the_deadline() -> None:
    now = [0.0]

    async def slow_read(request: ReadRequest) -> list[int]:
        now[0] += 0.1  # each request takes 100 ms
        return await device.read(request)

    device = FakeDevice({0, 1, 3})
    budget = SplitBudget(deadline=0.25, clock=lambda: now[0])
    with pytest.raises(SplitAbandoned, match="at the tick's deadline after 3 requests"):
        asyncio.run(split_halves(slow_read, 3, regs(0, 1, 3, 5, 7, 9), budget=budget))
    assert len(device.requests) == 3
