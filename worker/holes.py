"""Holes in a device's register map: found by bisecting a refused read, remembered per device.

When a merged request is answered with exception 2 (ILLEGAL DATA ADDRESS), the registers it
covers are bisected until every part either reads or is a single register the device refuses.
The parts that read are remembered per device and planned request (each `Device` has its
`Holes`), so later ticks go straight to them instead of retrying the failing span; the refused
registers are logged once.

A split is bounded: at most `MAX_SPLIT_REQUESTS` requests, and none after the tick's deadline. A
split that reaches either bound is abandoned for this tick (`SplitAbandoned`: the planned
request's registers are reported not read, nothing is learned) and tried again on the next; a
register map that needs more (a device refusing every other register) wants
`max_gap_registers` 0 or smaller `max_read_registers` for its type.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from emm.codec import RequestDecoder
from emm.errors import DeviceError, PermanentDeviceError
from emm.modbus import ILLEGAL_DATA_ADDRESS
from emm.planner import ReadRequest
from emm.registers import Register

# A learned split is tried as planned again after this long (firmware updates, replaced devices).
HOLE_MEMORY_TTL_S = 3600.0
# Requests one split may send: bisecting 125 registers around a few holes takes some 20.
MAX_SPLIT_REQUESTS = 64

Reader = Callable[[ReadRequest], Awaitable[list[int]]]


@dataclass(frozen=True)
class Split:
    """What a failing merged request was split into: parts that read, registers that never do."""

    parts: tuple[RequestDecoder, ...]
    unreadable: dict[str, str]
    expires_at: float


class Holes:
    """One device's learned splits, by the planned request's decoder."""

    __slots__ = ("_splits", "clock", "ttl_s")

    def __init__(
        self, ttl_s: float = HOLE_MEMORY_TTL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._splits: dict[RequestDecoder, Split] = {}

    def get(self, decoder: RequestDecoder) -> Split | None:
        """The split learned for the planned request `decoder`, unless it has expired."""
        split = self._splits.get(decoder)
        if split is not None and split.expires_at < self.clock():
            del self._splits[decoder]
            return None
        return split

    def unreadable(self) -> set[str]:
        """Names of the device's registers already known to be refused (reported once)."""
        return {name for split in self._splits.values() for name in split.unreadable}

    def learn(
        self, decoder: RequestDecoder, parts: list[RequestDecoder], unreadable: dict[str, str]
    ) -> Split:
        """Remember that `decoder`'s request reads as `parts`, and which registers never do."""
        split = Split(tuple(parts), dict(unreadable), self.clock() + self.ttl_s)
        self._splits[decoder] = split
        return split


class SplitAbandoned(DeviceError):
    """A split that reached its request cap or the tick's deadline before it was done."""

    code = "hole_split_abandoned"


class SplitBudget:
    """What one split may still spend: requests, and time until `deadline` (on `clock`)."""

    __slots__ = ("clock", "deadline", "max_requests", "sent")

    def __init__(
        self,
        max_requests: int = MAX_SPLIT_REQUESTS,
        deadline: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_requests = max_requests
        self.deadline = deadline
        self.clock = clock
        self.sent = 0

    def spend(self, registers: int) -> None:
        """Account for one more request; SplitAbandoned when none may be sent."""
        if self.sent >= self.max_requests:
            raise SplitAbandoned(
                f"hole split abandoned after {self.sent} requests (at most "
                f"{self.max_requests}); {registers} register(s) left unsplit"
            )
        if self.deadline is not None and self.clock() >= self.deadline:
            raise SplitAbandoned(
                f"hole split abandoned at the tick's deadline after {self.sent} requests"
            )
        self.sent += 1


def request_for(decoder: RequestDecoder, function_code: int) -> ReadRequest:
    """The read request that fetches the words `decoder` decodes."""
    return ReadRequest(function_code, decoder.start, decoder.count)


def _decoder_for(registers: tuple[Register, ...]) -> RequestDecoder:
    start = min(r.address for r in registers)
    end = max(r.end for r in registers)
    return RequestDecoder.build(start, end - start, registers)


async def split_read(
    read: Reader,
    function_code: int,
    registers: tuple[Register, ...],
    budget: SplitBudget | None = None,
) -> tuple[list[tuple[RequestDecoder, list[int]]], dict[str, str]]:
    """Bisect `registers` until each part reads or is one register refused with exception 2.

    Returns the parts that read (with their words) and {name: error} of the refused registers.
    Transient errors propagate: the device is gone, not the address; so does SplitAbandoned
    when `budget` (default: `MAX_SPLIT_REQUESTS`, no deadline) runs out.
    """
    budget = budget or SplitBudget()
    decoder = _decoder_for(registers)
    budget.spend(len(registers))
    try:
        words = await read(request_for(decoder, function_code))
        return [(decoder, words)], {}
    except PermanentDeviceError as exc:
        if exc.exception_code != ILLEGAL_DATA_ADDRESS:
            raise
        if len(registers) == 1:
            return [], {registers[0].name: str(exc)}
    return await split_halves(read, function_code, registers, budget=budget)


async def split_halves(
    read: Reader,
    function_code: int,
    registers: tuple[Register, ...],
    *,
    budget: SplitBudget | None = None,
    deadline: float | None = None,
) -> tuple[list[tuple[RequestDecoder, list[int]]], dict[str, str]]:
    """`split_read` of each half of `registers`, whose read together just failed; a new
    split's budget ends at `deadline` (`time.monotonic`), if given."""
    budget = budget or SplitBudget(deadline=deadline)
    ordered = tuple(sorted(registers, key=lambda r: r.address))
    middle = len(ordered) // 2
    left_parts, left_bad = await split_read(read, function_code, ordered[:middle], budget)
    right_parts, right_bad = await split_read(read, function_code, ordered[middle:], budget)
    return left_parts + right_parts, {**left_bad, **right_bad}
