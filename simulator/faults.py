"""Faults the virtual meters can show, from command-line flags or a scenario file (TOML or JSON).

A scenario lists faults; each names its `kind`, the meters it affects (meter indexes, default all),
how often it hits (`rate`, the fraction of requests, default 1) and optionally when (`after_s`
seconds after the simulator starts, for `for_s` seconds, repeating every `every_s`):

    seed = 7                          # randomness of rates and jitter (default 0)

    [[faults]]
    kind = "latency"                  # answer late: fixed_ms + uniform(0, jitter_ms)
    meters = "0-9"                    # "0-9,12", [0, 1, 5] or omitted for every meter
    fixed_ms = 40
    jitter_ms = 20

    [[faults]]
    kind = "exception"                # answer a read with Modbus exception `code` (1-11)
    code = 6
    rate = 0.1

    [[faults]]
    kind = "timeout"                  # never answer the request
    rate = 0.05
    after_s = 30
    for_s = 10
    every_s = 120

    [[faults]]
    kind = "reset"                    # reset the TCP connection (RST) instead of answering
    rate = 0.01

    [[faults]]
    kind = "reboot"                   # refuse connections (or, behind a shared gateway port,
    meters = [3]                      # answer exception 11) while the window lasts
    after_s = 60
    for_s = 15
    every_s = 600
    reset_energy = true               # energy counters restart from zero after each reboot

    [[faults]]
    kind = "hole"                     # these addresses answer exception 2 (ILLEGAL DATA ADDRESS)
    function_code = 4                 # omitted: every read function code
    addresses = [70, "342-345"]       # inclusive ranges

    [[faults]]
    kind = "violation"                # answer, but against the protocol (Modbus TCP framing):
    violation = "transaction_id"      #   transaction_id  another transaction id than asked
    rate = 0.5                        #   byte_count      a byte count 2 more than the data
                                      #   function_code   another read function code (3<->4,
                                      #                   1<->2)
                                      #   short_frame     the last 2 bytes its header
                                      #                   announces never sent

Value faults: the read succeeds but the value is one no meter measured (what the writer's
plausibility guard is for). Their window is checked at the simulated time step a value belongs
to, not at the request: with `EMM_SIMULATOR_STEP_S` equal to the read period, `for_s` of one
period hits exactly one tick.

    [[faults]]
    kind = "spike"                    # the registers read `add` more (in their own unit)
    meters = [0]
    registers = ["importActiveEnergy"] # omitted: every energy counter of the meter
    add = 9113                        # default 9113
    after_s = 20
    for_s = 5

    [[faults]]
    kind = "zero"                     # the registers read 0 (a transient zero)
    meters = [1]
    registers = ["importActiveEnergy"]
    after_s = 20
    for_s = 5

    [[faults]]
    kind = "word_order"               # 32- and 64-bit values are served with their 16-bit
    meters = [2]                      # words in the opposite order (CDAB for ABCD)
"""

from __future__ import annotations

import json
import math
import random
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emm.errors import ConfigError
from emm.modbus import READ_FUNCTION_CODES

VALUE_KINDS = ("spike", "zero", "word_order")
KINDS = ("latency", "timeout", "exception", "reset", "reboot", "hole", "violation", *VALUE_KINDS)
VIOLATIONS = ("transaction_id", "byte_count", "function_code", "short_frame")
SPIKE_ADD = 9113.0  # an SDM630's notorious spike, in kWh
EXCEPTION_CODES = frozenset({1, 2, 3, 4, 5, 6, 8, 10, 11})
_KEYS = {
    "kind",
    "meters",
    "rate",
    "after_s",
    "for_s",
    "every_s",
    "code",
    "fixed_ms",
    "jitter_ms",
    "function_code",
    "addresses",
    "reset_energy",
    "violation",
    # value faults
    "registers",
    "add",
}


@dataclass(frozen=True, slots=True)
class Window:
    """When something is active, in clock seconds: from `start_s` for `for_s` (None: for ever),
    repeating every `every_s` (None: once)."""

    start_s: float
    for_s: float | None = None
    every_s: float | None = None

    def __post_init__(self) -> None:
        if self.for_s is not None and not self.for_s > 0:
            raise ConfigError(f"for_s must be more than 0, got {self.for_s}")
        if self.every_s is not None:
            if self.for_s is None:
                raise ConfigError("every_s needs for_s (how long each window lasts)")
            if not self.every_s > self.for_s:
                raise ConfigError(f"every_s {self.every_s} must be more than for_s {self.for_s}")

    def active(self, t_s: float) -> bool:
        if t_s < self.start_s:
            return False
        if self.for_s is None:
            return True
        into = t_s - self.start_s
        if self.every_s is not None:
            into %= self.every_s
        return into < self.for_s

    def last_end(self, t_s: float) -> float | None:
        """When the latest window that is over by `t_s` ended (None if none is)."""
        if self.for_s is None or t_s < self.start_s + self.for_s:
            return None
        if self.every_s is None:
            return self.start_s + self.for_s
        k = math.floor((t_s - self.start_s - self.for_s) / self.every_s)
        return self.start_s + k * self.every_s + self.for_s


@dataclass(frozen=True)
class Fault:
    """One fault as configured; its timing is relative to when the simulator starts."""

    kind: str
    meters: frozenset[int] | None = None  # meter indexes; None: every meter
    rate: float = 1.0
    after_s: float = 0.0
    for_s: float | None = None
    every_s: float | None = None
    code: int = 0
    fixed_ms: float = 0.0
    jitter_ms: float = 0.0
    function_code: int | None = None
    ranges: tuple[tuple[int, int], ...] = ()  # hole: [start, end) address ranges
    reset_energy: bool = False
    violation: str = ""
    registers: tuple[str, ...] = ()  # value faults: the registers (empty: every counter)
    add: float = SPIKE_ADD

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if not 0.0 <= self.rate <= 1.0:
            raise ConfigError(f"rate {self.rate} must be between 0 and 1")
        if self.after_s < 0:
            raise ConfigError(f"after_s {self.after_s} must be 0 or more")
        self.window(0.0)  # validates for_s / every_s
        if self.kind == "exception" and self.code not in EXCEPTION_CODES:
            codes = ", ".join(map(str, sorted(EXCEPTION_CODES)))
            raise ConfigError(f"exception code {self.code!r} is not one of {codes}")
        if self.kind == "latency" and (self.fixed_ms < 0 or self.jitter_ms < 0):
            raise ConfigError("fixed_ms and jitter_ms must be 0 or more")
        if self.kind == "reboot" and self.for_s is None:
            raise ConfigError("a reboot needs for_s (how long the meter is down)")
        if self.kind == "violation" and self.violation not in VIOLATIONS:
            raise ConfigError(f"violation {self.violation!r} is not one of {', '.join(VIOLATIONS)}")
        if self.kind == "hole":
            if not self.ranges:
                raise ConfigError("a hole needs addresses")
            if self.function_code is not None and self.function_code not in READ_FUNCTION_CODES:
                raise ConfigError(f"function_code {self.function_code} is not 1, 2, 3 or 4")

    def applies_to(self, index: int) -> bool:
        return self.meters is None or index in self.meters

    def window(self, started_s: float) -> Window | None:
        """The fault's window in clock time for a run started at `started_s` (None: always)."""
        if self.after_s == 0 and self.for_s is None and self.every_s is None:
            return None
        return Window(started_s + self.after_s, self.for_s, self.every_s)


@dataclass(frozen=True)
class Scenario:
    """The faults of a simulator run and the seed of their randomness."""

    faults: tuple[Fault, ...] = ()
    seed: int = 0

    def __add__(self, other: Scenario) -> Scenario:
        return Scenario(self.faults + other.faults, self.seed or other.seed)


def parse_meters(value: Any) -> frozenset[int] | None:
    """Meter indexes from "0-9,12", [0, "3-5"] or an int; None (every meter) for None or "all"."""
    if value is None or value == "all":
        return None
    parts: Iterable[Any]
    if isinstance(value, str):
        parts = [p for p in value.split(",") if p.strip()]
    elif isinstance(value, list):
        parts = value
    else:
        parts = [value]
    indexes: set[int] = set()
    for part in parts:
        start, end = _parse_range(part, "meter")
        indexes.update(range(start, end))
    return frozenset(indexes)


def _parse_range(part: Any, what: str) -> tuple[int, int]:
    """An int or "a-b" (inclusive) as a half-open range [a, b + 1)."""
    if isinstance(part, bool):
        raise ConfigError(f"{what} {part!r} is not a number or a range such as 3-5")
    if isinstance(part, int):
        low = high = part
    else:
        text = str(part).strip()
        try:
            if "-" in text[1:]:
                a, b = text.split("-", 1)
                low, high = int(a, 0), int(b, 0)
            else:
                low = high = int(text, 0)
        except ValueError:
            raise ConfigError(f"{what} {part!r} is not a number or a range such as 3-5") from None
    if low < 0 or high < low:
        raise ConfigError(f"{what} range {part!r} is empty or negative")
    return low, high + 1


def parse_fault(data: Any, where: str = "fault") -> Fault:
    """A fault from a scenario table; ConfigError names `where` and the problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a fault must be a table")
    unknown = set(data) - _KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    if "kind" not in data:
        raise ConfigError(f"{where}: missing key 'kind'")
    try:
        ranges = tuple(_parse_range(a, "address") for a in _as_list(data.get("addresses", [])))
        for _, end in ranges:
            if end > 65536:
                raise ConfigError(f"address {end - 1} is above 65535")
        fc = data.get("function_code")
        return Fault(
            kind=str(data["kind"]),
            meters=parse_meters(data.get("meters")),
            rate=float(data.get("rate", 1.0)),
            after_s=float(data.get("after_s", 0.0)),
            for_s=None if data.get("for_s") is None else float(data["for_s"]),
            every_s=None if data.get("every_s") is None else float(data["every_s"]),
            code=int(data.get("code", 0)),
            fixed_ms=float(data.get("fixed_ms", 0.0)),
            jitter_ms=float(data.get("jitter_ms", 0.0)),
            function_code=None if fc is None else int(fc),
            ranges=ranges,
            reset_energy=bool(data.get("reset_energy", False)),
            violation=str(data.get("violation", "")),
            registers=tuple(str(name) for name in _as_list(data.get("registers", []))),
            add=float(data.get("add", SPIKE_ADD)),
        )
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def parse_scenario(data: Any, where: str) -> Scenario:
    """A scenario from its decoded file contents."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a scenario must be a table with [[faults]]")
    unknown = set(data) - {"seed", "faults"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    faults = data.get("faults", [])
    if not isinstance(faults, list):
        raise ConfigError(f"{where}: 'faults' must be a list of tables")
    try:
        seed = int(data.get("seed", 0))
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: seed {data.get('seed')!r} is not a whole number") from None
    return Scenario(
        tuple(parse_fault(f, f"{where}: fault {i + 1}") for i, f in enumerate(faults)), seed
    )


def load_scenario(path: str | Path) -> Scenario:
    """Read a scenario file: JSON when it ends in .json, TOML otherwise."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from None
    try:
        data = json.loads(text) if p.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        kind = "JSON" if p.suffix.lower() == ".json" else "TOML"
        raise ConfigError(f"{p}: not valid {kind}: {exc}") from None
    return parse_scenario(data, str(p))


# What a request gets instead of its answer.
TIMEOUT = "timeout"
RESET = "reset"


@dataclass(frozen=True, slots=True)
class Violation:
    """An answer to send against the protocol, as `what` (one of VIOLATIONS) says."""

    what: str


@dataclass
class FaultPlan:
    """The faults of one meter at run time, their windows resolved against the start time."""

    index: int
    started_s: float
    seed: int = 0
    faults: Sequence[Fault] = ()
    _latency: list[tuple[Fault, Window | None]] = field(default_factory=list, repr=False)
    _actions: list[tuple[Fault, Window | None]] = field(default_factory=list, repr=False)
    _holes: list[tuple[Fault, Window | None]] = field(default_factory=list, repr=False)
    reboots: list[tuple[Window, bool]] = field(default_factory=list, repr=False)
    distortions: list[Distortion] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        # Seeded per meter so a run's draws do not depend on how the other meters are read.
        self._rng = random.Random(self.seed * 1_000_003 + self.index)
        for fault in self.faults:
            if not fault.applies_to(self.index):
                continue
            window = fault.window(self.started_s)
            if fault.kind == "latency":
                self._latency.append((fault, window))
            elif fault.kind == "hole":
                self._holes.append((fault, window))
            elif fault.kind in VALUE_KINDS:
                names = frozenset(fault.registers) or None
                self.distortions.append(Distortion(fault.kind, names, fault.add, window))
            elif fault.kind == "reboot":
                assert window is not None  # a reboot always has for_s
                self.reboots.append((window, fault.reset_energy))
            else:
                self._actions.append((fault, window))

    @property
    def quiet(self) -> bool:
        """True when no fault applies to this meter."""
        return not (
            self._latency or self._actions or self._holes or self.reboots or self.distortions
        )

    @property
    def energy_resets(self) -> tuple[Window, ...]:
        """The reboot windows after which this meter's energy counters restart from zero."""
        return tuple(window for window, reset in self.reboots if reset)

    def rebooting(self, t_s: float) -> bool:
        return any(window.active(t_s) for window, _ in self.reboots)

    def _hits(self, fault: Fault, window: Window | None, t_s: float) -> bool:
        if window is not None and not window.active(t_s):
            return False
        return fault.rate >= 1.0 or self._rng.random() < fault.rate

    def delay_s(self, t_s: float) -> float:
        """How long to wait before answering."""
        delay_ms = 0.0
        for fault, window in self._latency:
            if self._hits(fault, window, t_s):
                delay_ms += fault.fixed_ms + self._rng.uniform(0.0, fault.jitter_ms)
        return delay_ms / 1000.0

    def action(self, t_s: float) -> str | int | Violation | None:
        """TIMEOUT, RESET, a Modbus exception code, a Violation, or None to answer normally."""
        for fault, window in self._actions:
            if self._hits(fault, window, t_s):
                if fault.kind == "violation":
                    return Violation(fault.violation)
                return fault.code if fault.kind == "exception" else fault.kind
        return None

    def in_hole(self, function_code: int, address: int, count: int, t_s: float) -> bool:
        end = address + count
        for fault, window in self._holes:
            if fault.function_code is not None and fault.function_code != function_code:
                continue
            if window is not None and not window.active(t_s):
                continue
            if any(start < end and address < stop for start, stop in fault.ranges):
                return True
        return False


# Value faults, applied by the meter's model (`simulator.model.ProfileMeter`) to the values of
# one time step.


@dataclass(frozen=True, slots=True)
class Distortion:
    """A value fault of one meter: `kind` (spike, zero or word_order), the registers it hits
    (None: every energy counter; all registers of 2 or more words for word_order), what a
    spike adds, and when (None: always)."""

    kind: str
    registers: frozenset[str] | None = None
    add: float = SPIKE_ADD
    window: Window | None = None

    def active(self, t_s: float) -> bool:
        return self.window is None or self.window.active(t_s)

    def hits(self, name: str, is_counter: bool) -> bool:
        return is_counter if self.registers is None else name in self.registers
