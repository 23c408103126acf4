"""What the virtual meters answer: register values that are a pure function of (seed, time).

A test can therefore compute exactly what a reading at a given tick must contain with
`expected(...)`, and the server encodes those values with the same codec the worker decodes with.
Time is quantised to `step_s` and rounded to the nearest step, so a read a little after a tick
(less than half a step) sees the tick's values.

Two kinds of meter:
- `VirtualMeter`, the original project's: holding register 0, an int16 sawtooth.
- `ProfileMeter`, any device profile: each register is read as the `simulator.physics` quantity
  of its name, or the `simulator.derived` one (direction-split powers; the PV side of an
  inverter, whose AC output then replaces the meter's load), converted to the register's
  unit (e.g. kWh to Wh). A register whose name is not
  modelled reads a constant derived from its name and the seed (see `fallback_value`); every
  register of the shipped profiles is modelled.

Unmapped addresses between registers no further apart than the profile's `max_gap_registers`
(at least 50, the planner's default) read 0, as real meters answer reads that bridge small gaps;
any other unmapped address answers exception 2 (ILLEGAL DATA ADDRESS).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from emm.codec import decode, encode
from emm.errors import ConfigError
from emm.modbus import BIT_FUNCTION_CODES, ILLEGAL_DATA_ADDRESS
from emm.planner import DEFAULT_MAX_GAP
from emm.profiles import Profile, load_profile, shipped_profile, shipped_profiles
from emm.registers import DataType, Register
from simulator.derived import DERIVED_UNITS, PvArray, derived_quantities, is_inverter
from simulator.faults import Distortion, Window
from simulator.physics import (
    COMMISSIONED_S,
    UNITS,
    MeterPhysics,
    counting_since,
    quantities,
    unit_factor,
)

VIRTUAL_TYPE = "virtual_modbustcp"
VIRTUAL_REGISTERS = (Register("test_measurement", 0, 3, DataType.INT16, unit="test_u"),)


def step_index(t_s: float, step_s: float) -> int:
    """The step a time falls in, rounding to the nearest step boundary."""
    return round(t_s / step_s)


def virtual_value(seed: int, k: int) -> int:
    """The original virtual meter's changing value: a sawtooth of period 1000 steps."""
    return (k * 37 + seed * 101) % 1000


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where the registers of one function code sit: the span the image covers and which
    addresses of it may be read."""

    function_code: int
    base: int
    size: int
    unreadable_before: tuple[int, ...]  # prefix counts of unreadable addresses, size + 1 long
    slots: tuple[tuple[Register, int], ...]  # each register and its offset from `base`

    def readable(self, address: int, count: int) -> bool:
        start = address - self.base
        end = start + count
        if start < 0 or end > self.size:
            return False
        return self.unreadable_before[end] == self.unreadable_before[start]


@lru_cache(maxsize=64)
def _layouts(registers: tuple[Register, ...], max_gap: int) -> dict[int, _Layout]:
    """The layout of each function code; shared by all meters of a register map."""
    by_fc: dict[int, list[Register]] = {}
    for reg in registers:
        by_fc.setdefault(reg.function_code, []).append(reg)
    layouts = {}
    for fc, regs in by_fc.items():
        regs.sort(key=lambda r: r.address)
        base = regs[0].address
        size = max(r.end for r in regs) - base
        readable = bytearray(size)
        # Runs of registers no further apart than max_gap form readable clusters.
        clusters = [[regs[0].address, regs[0].end]]
        for reg in regs[1:]:
            if reg.address - clusters[-1][1] <= max_gap:
                clusters[-1][1] = max(clusters[-1][1], reg.end)
            else:
                clusters.append([reg.address, reg.end])
        for start, end in clusters:
            readable[start - base : end - base] = b"\x01" * (end - start)
        prefix = [0]
        for flag in readable:
            prefix.append(prefix[-1] + (0 if flag else 1))
        layouts[fc] = _Layout(
            fc, base, size, tuple(prefix), tuple((r, r.address - base) for r in regs)
        )
    return layouts


def _words(value: float, register: Register) -> list[int]:
    """The register's words for `value`, clamped into the range its type can carry."""
    dtype = register.data_type
    if dtype is DataType.BOOL or dtype.is_float:
        return encode(value, register)
    bits = 16 * dtype.words
    signed = dtype in (DataType.INT16, DataType.INT32, DataType.INT64)
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    raw = round((value - register.offset) / register.scale)
    if low <= raw <= high:
        return encode(value, register)
    raw = min(max(raw, low), high)
    return encode(raw * register.scale + register.offset, register)


def fallback_value(register: Register, seed: int) -> float:
    """A constant for a register the model does not know: from its name and the meter's seed,
    small enough for any type and scale."""
    digest = zlib.crc32(register.name.encode()) + 7919 * seed
    if register.data_type is DataType.BOOL:
        return float(digest & 1)
    if register.data_type.is_float:
        return (digest % 10000) / 100.0
    return (digest % 100) * register.scale + register.offset


class RegisterMapMeter:
    """A device answering reads from a register map whose values come from `values_at`.

    The encoded image of each function code is cached per time step, so reads within a step
    cost a slice.
    """

    def __init__(self, registers: Sequence[Register], *, step_s: float, max_gap: int) -> None:
        if step_s <= 0:
            raise ConfigError(f"step_s must be more than 0, got {step_s}")
        self.registers = tuple(registers)
        self.step_s = step_s
        self._layouts = _layouts(self.registers, max_gap)
        self._images: dict[int, tuple[int, bytes | bytearray]] = {}

    def values_at(self, t_s: float) -> dict[str, float]:
        """The physical value of every register at time `t_s` (seconds since the epoch)."""
        raise NotImplementedError

    def swapped(self, t_s: float) -> bool:
        """Whether values of several words are served in the wrong word order at `t_s`."""
        return False

    def _image(self, fc: int, t_s: float) -> bytes | bytearray:
        k = step_index(t_s, self.step_s)
        cached = self._images.get(fc)
        if cached is not None and cached[0] == k:
            return cached[1]
        layout = self._layouts[fc]
        values = self.values_at(t_s)
        image: bytes | bytearray
        if fc in BIT_FUNCTION_CODES:
            image = bytearray(layout.size)
            for reg, offset in layout.slots:
                image[offset] = encode(values[reg.name], reg)[0]
        else:
            words = [0] * layout.size
            swapped = self.swapped(t_s)
            for reg, offset in layout.slots:
                value_words = _words(values[reg.name], reg)
                if swapped:
                    value_words.reverse()
                words[offset : offset + reg.data_type.words] = value_words
            image = struct.pack(f">{layout.size}H", *words)
        self._images[fc] = (k, image)
        return image

    def read_bytes(self, function_code: int, address: int, count: int, t_s: float) -> bytes | int:
        """The data bytes of a read response (registers big endian, bits packed LSB first),
        or a Modbus exception code."""
        layout = self._layouts.get(function_code)
        if layout is None or not layout.readable(address, count):
            return ILLEGAL_DATA_ADDRESS
        image = self._image(function_code, t_s)
        start = address - layout.base
        if function_code in BIT_FUNCTION_CODES:
            return _pack_bits(image[start : start + count])
        return bytes(image[2 * start : 2 * (start + count)])

    def read(self, function_code: int, address: int, count: int, t_s: float) -> list[int] | int:
        """The words (or bits, as 0/1) a read returns, or a Modbus exception code."""
        data = self.read_bytes(function_code, address, count, t_s)
        if isinstance(data, int):
            return data
        if function_code in BIT_FUNCTION_CODES:
            return [(data[i // 8] >> (i % 8)) & 1 for i in range(count)]
        return list(struct.unpack(f">{count}H", data))


def _pack_bits(bits: bytes | bytearray) -> bytes:
    out = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        if bit:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


class VirtualMeter(RegisterMapMeter):
    """The original project's virtual meter: holding register 0, an int16 that changes each step."""

    def __init__(self, seed: int = 0, step_s: float = 1.0) -> None:
        super().__init__(VIRTUAL_REGISTERS, step_s=step_s, max_gap=0)
        self.seed = seed

    def values_at(self, t_s: float) -> dict[str, float]:
        k = step_index(t_s, self.step_s)
        return {"test_measurement": float(virtual_value(self.seed, k))}


def virtual_profile() -> Profile:
    """The virtual meter's register map as a profile (for `--write-config`)."""
    from emm.planner import ReadLimits
    from emm.profiles import ProfileRegister

    return Profile(
        type=VIRTUAL_TYPE,
        name="Virtual meter of the original project",
        source="the original project's README (virtual_modbustcp)",
        limits=ReadLimits(),
        rows=tuple(
            ProfileRegister(r, "virtual meter of the original project") for r in VIRTUAL_REGISTERS
        ),
        path="simulator",
    )


def resolve_profile(name: str) -> Profile | None:
    """A shipped profile type, a profile file (ending .toml), or None for the virtual meter."""
    if name in ("", VIRTUAL_TYPE, "virtual"):
        return None
    if name.endswith(".toml"):
        return load_profile(name)
    profile = shipped_profile(name)
    if profile is None:
        known = ", ".join([VIRTUAL_TYPE] + [p.type for p in shipped_profiles()])
        raise ConfigError(f"unknown profile {name!r} (known: {known}, or a .toml file)")
    return profile


@dataclass(frozen=True)
class MeterSpec:
    """What one virtual meter is: register map (None: the original virtual meter), seed, time
    step, the reboot windows after which its energy counters restart from zero, and its value
    faults (`simulator.faults.Distortion`)."""

    seed: int = 0
    profile: Profile | None = None
    step_s: float = 1.0
    energy_resets: tuple[Window, ...] = ()
    distortions: tuple[Distortion, ...] = ()

    @classmethod
    def of_type(cls, type_: str, seed: int = 0, step_s: float = 1.0) -> MeterSpec:
        """A meter of a shipped profile type (or the virtual meter)."""
        return cls(seed=seed, profile=resolve_profile(type_), step_s=step_s)

    @property
    def type(self) -> str:
        return VIRTUAL_TYPE if self.profile is None else self.profile.type

    @property
    def registers(self) -> tuple[Register, ...]:
        return VIRTUAL_REGISTERS if self.profile is None else self.profile.registers


def phase_count(registers: Sequence[Register]) -> int:
    """1 for a single-phase map (L1 registers but no L2/L3 ones), else 3."""
    names = [r.name for r in registers]
    has = {p: any(p in n for n in names) for p in ("L1", "L2", "L3")}
    return 1 if has["L1"] and not (has["L2"] or has["L3"]) else 3


class ProfileMeter(RegisterMapMeter):
    """A meter of a device profile whose registers read the physics model's quantities."""

    def __init__(self, spec: MeterSpec) -> None:
        if spec.profile is None:
            raise ConfigError("a ProfileMeter needs a profile")
        profile = spec.profile
        super().__init__(
            profile.registers,
            step_s=spec.step_s,
            max_gap=max(profile.limits.max_gap, DEFAULT_MAX_GAP),
        )
        self.spec = spec
        self.physics = MeterPhysics.from_seed(spec.seed, phase_count(profile.registers))
        names = [reg.name for reg in self.registers]
        self.pv = PvArray.from_seed(spec.seed) if is_inverter(names) else None
        modelled = self._quantities(COMMISSIONED_S, COMMISSIONED_S).keys()
        # (register, model quantity or None, unit factor or the fallback constant)
        self._map: list[tuple[Register, str | None, float]] = []
        for reg in self.registers:
            canonical = UNITS.get(reg.name, DERIVED_UNITS.get(reg.name))
            if canonical is None or reg.name not in modelled:
                self._map.append((reg, None, fallback_value(reg, spec.seed)))
            else:
                self._map.append((reg, reg.name, unit_factor(canonical, reg.unit)))

    @property
    def unmodelled(self) -> list[str]:
        """The registers that read a constant because the model does not know their name."""
        return [reg.name for reg, name, _ in self._map if name is None]

    def _quantities(self, t_s: float, since: float) -> dict[str, float]:
        """The grid model's quantities with the derived ones (PV side for an inverter)."""
        return derived_quantities(quantities(self.physics, t_s, since), self.pv, t_s, since)

    def values_at(self, t_s: float) -> dict[str, float]:
        t_q = step_index(t_s, self.step_s) * self.step_s
        since = counting_since(t_q, (w.last_end(t_q) for w in self.spec.energy_resets))
        q = self._quantities(t_q, since)
        values = {
            reg.name: factor if name is None else q[name] * factor
            for reg, name, factor in self._map
        }
        for fault in self.spec.distortions:
            if fault.kind != "word_order" and fault.active(t_q):
                for reg in self.registers:
                    if fault.hits(reg.name, reg.is_counter):
                        values[reg.name] = (
                            0.0 if fault.kind == "zero" else values[reg.name] + fault.add
                        )
        return values

    def swapped(self, t_s: float) -> bool:
        t_q = step_index(t_s, self.step_s) * self.step_s
        return any(f.kind == "word_order" and f.active(t_q) for f in self.spec.distortions)


def make_meter(spec: MeterSpec) -> RegisterMapMeter:
    """The device that serves `spec`."""
    if spec.profile is None:
        return VirtualMeter(seed=spec.seed, step_s=spec.step_s)
    return ProfileMeter(spec)


def expected(meter: int | MeterSpec, tick_ms: int, step_s: float = 1.0) -> dict[str, float]:
    """The fields a reading of a meter at `tick_ms` must contain, exactly as decoded.

    `meter` is a `MeterSpec`, or a seed for the original virtual meter (then `step_s` applies).
    Values go through the codec round trip (float32 rounding, integer scaling), so they compare
    equal (==) with what a client decodes; "not available" values are left out.
    """
    if isinstance(meter, int):
        meter = MeterSpec(seed=meter, step_s=step_s)
    device = make_meter(meter)
    t_s = tick_ms / 1000
    out: dict[str, float] = {}
    for reg in meter.registers:
        words = device.read(reg.function_code, reg.address, reg.data_type.words, t_s)
        assert not isinstance(words, int), f"{reg.name} is not readable"
        value = decode(words, reg)
        if value is not None:
            out[reg.name] = value
    return out
