"""Read planning: the fewest Modbus requests that cover a device's registers.

Registers are grouped by function code and merged into contiguous requests, bridging runs of at
most `max_gap` unused registers and never exceeding the device's per-request limit. Within one
function code the greedy sweep (extend the current request while the next register fits) gives
the minimum number of requests for those rules, and the result depends only on the input set.

Poll classes decide which registers a tick reads at all (`due_classes`): a register with
`poll_every` N is due on every Nth tick of its meter, one with 0 once and then daily. A tick's
requests are planned from its due registers only, so slow registers cost requests only on the
ticks that read them.

A register with a `scale_register` is planned together with that register (a SunSpec scale
factor): the two, and every register linked to them, form one unit that a single request
covers whole, so a value is always scaled by the factor read with it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from emm.errors import ConfigError
from emm.modbus import BIT_FUNCTION_CODES, MAX_BITS_PER_READ, MAX_REGISTERS_PER_READ
from emm.registers import Register, scale_problems

DEFAULT_MAX_GAP = 50
DAY_MS = 86_400_000
# Step between the daily moments of consecutive meter ids: the day times the golden ratio's
# fraction (0.618...), which spreads any run of consecutive ids evenly over the day.
_DAILY_STEP_MS = 53_398_137


@dataclass(frozen=True, slots=True)
class ReadLimits:
    """How a device may be read: request sizes and how many unused registers to bridge."""

    max_registers: int = MAX_REGISTERS_PER_READ
    max_bits: int = MAX_BITS_PER_READ
    max_gap: int = DEFAULT_MAX_GAP

    def __post_init__(self) -> None:
        if not 1 <= self.max_registers <= MAX_REGISTERS_PER_READ:
            raise ConfigError(f"max_read_registers {self.max_registers} is outside 1..125")
        if not 1 <= self.max_bits <= MAX_BITS_PER_READ:
            raise ConfigError(f"max_read_bits {self.max_bits} is outside 1..2000")
        if self.max_gap < 0:
            raise ConfigError(f"max_gap_registers {self.max_gap} must be 0 or more")


@dataclass(frozen=True, slots=True, order=True)
class ReadRequest:
    """One Modbus read: function code, first address, number of registers (or bits)."""

    function_code: int
    address: int
    count: int

    @property
    def end(self) -> int:
        return self.address + self.count

    def covers(self, register: Register) -> bool:
        return (
            register.function_code == self.function_code
            and self.address <= register.address
            and register.end <= self.end
        )


def plan(registers: Iterable[Register], limits: ReadLimits | None = None) -> list[ReadRequest]:
    """Merge the registers into the fewest read requests the limits allow, sorted."""
    limits = limits or ReadLimits()
    registers = list(registers)
    problems = scale_problems(registers)
    if problems:
        raise ConfigError("; ".join(f"register {n!r}: {p}" for n, p in problems.items()))
    by_fc: dict[int, list[Register]] = {}
    for reg in registers:
        by_fc.setdefault(reg.function_code, []).append(reg)
    requests: list[ReadRequest] = []
    for fc in sorted(by_fc):
        cap = limits.max_bits if fc in BIT_FUNCTION_CODES else limits.max_registers
        start = end = -1
        for first, last, names in _units(by_fc[fc]):
            if last - first > cap:
                raise ConfigError(
                    f"register {names[0]!r} needs {last - first} registers"
                    + (f" (read with {', '.join(names[1:])})" if names[1:] else "")
                    + f", more than the device's limit of {cap} per request"
                )
            if start >= 0 and first - end <= limits.max_gap and max(end, last) - start <= cap:
                end = max(end, last)
                continue
            if start >= 0:
                requests.append(ReadRequest(fc, start, end - start))
            start, end = first, last
        if start >= 0:
            requests.append(ReadRequest(fc, start, end - start))
    return requests


def _units(registers: list[Register]) -> list[tuple[int, int, list[str]]]:
    """The registers of one function code as units read whole, sorted: (first address, one
    past the last, names). A unit is a register, or registers linked by scale factors."""
    parent = list(range(len(registers)))
    by_name = {r.name: i for i, r in reversed(list(enumerate(registers)))}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, reg in enumerate(registers):
        if reg.scale_register in by_name:
            parent[root(i)] = root(by_name[reg.scale_register])
    spans: dict[int, tuple[int, int, list[str]]] = {}
    for i in sorted(range(len(registers)), key=lambda i: (registers[i].address, registers[i].end)):
        reg = registers[i]
        first, last, names = spans.get(root(i), (reg.address, reg.end, []))
        spans[root(i)] = (min(first, reg.address), max(last, reg.end), [*names, reg.name])
    return sorted(spans.values(), key=lambda u: (u[0], u[1]))


def assign(
    requests: Iterable[ReadRequest], registers: Iterable[Register]
) -> list[tuple[ReadRequest, tuple[Register, ...]]]:
    """Pair each request with the registers it covers (each register goes to its first cover)."""
    pending = list(registers)
    pairs = []
    for request in requests:
        covered = tuple(r for r in pending if request.covers(r))
        pending = [r for r in pending if not request.covers(r)]
        pairs.append((request, covered))
    if pending:
        names = ", ".join(r.name for r in pending)
        raise ConfigError(f"no planned request covers the register(s) {names}")
    return pairs


def due_classes(
    classes: Iterable[int], meter_id: int, tick_index: int, daily: bool
) -> frozenset[int]:
    """The poll classes (`Register.poll_every` values) due at one tick of a meter.

    Class N > 0 is due when `tick_index + meter_id` is a multiple of N: every Nth tick, and
    meters in turn, so the slow registers of many meters are spread over N ticks instead of
    all landing on one. Class 0 is due when `daily` is (see `daily_due`).
    """
    return frozenset(n for n in classes if (daily if n == 0 else (tick_index + meter_id) % n == 0))


def tick_index(tick_ms: int, period_ms: int) -> int:
    """A tick's number in its schedule, from its time alone: consecutive for a regular cron
    (one whose ticks are `period_ms` apart), the same in every process and after a restart."""
    return tick_ms // period_ms


def daily_moment_ms(meter_id: int) -> int:
    """The time of day (milliseconds after midnight UTC) at which a meter's daily registers
    fall due, spread over the day by its id."""
    return meter_id * _DAILY_STEP_MS % DAY_MS


def daily_due(meter_id: int, previous_ms: int, tick_ms: int) -> bool:
    """Whether the meter's daily moment lies in (previous_ms, tick_ms]: the tick that follows
    it reads the daily registers, once a day whatever the cron."""
    moment = daily_moment_ms(meter_id)
    return (tick_ms - moment) // DAY_MS != (previous_ms - moment) // DAY_MS
