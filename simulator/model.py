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

An inverter's registers (`acPower`, `dcVoltage`, `dcPower1`, ...) read the daylight curve of
`simulator.physics.pv_quantities`, and its operating state (an enum naming MPPT and SLEEPING)
is MPPT while the array gives power, else SLEEPING. Other text registers read fixed text: the
maker and model of a SunSpec profile's `[sunspec]`, else the register's name and the seed; an
enum its first name, a bitfield no bits. A register scaled by a scale-factor register is served
with the smallest power of ten (from -3) at which every value sharing that factor fits its
type, so the factor changes as the values do (small at dawn, larger at noon), as a SunSpec
device's may.

Unmapped addresses between registers no further apart than the profile's `max_gap_registers`
(at least 50, the planner's default) read 0, as real meters answer reads that bridge small gaps;
any other unmapped address answers exception 2 (ILLEGAL DATA ADDRESS).
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

from emm.codec import RequestDecoder, encode, encode_text
from emm.errors import ConfigError
from emm.modbus import BIT_FUNCTION_CODES, ILLEGAL_DATA_ADDRESS
from emm.planner import DEFAULT_MAX_GAP
from emm.profiles import Profile, load_profile, shipped_profile, shipped_profiles
from emm.registers import DataType, Order, Register
from simulator.derived import DERIVED_UNITS, PvArray, derived_quantities, is_inverter
from simulator.faults import Distortion, Window
from simulator.physics import (
    COMMISSIONED_S,
    PV_NAMES,
    UNITS,
    MeterPhysics,
    counting_since,
    pv_quantities,
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


def _words(value: float | str, register: Register, sf: int = 0) -> list[int]:
    """The register's words for `value` (with `sf`, its scale factor's power of ten), clamped
    into the range its type can carry."""
    if isinstance(value, str):
        return encode_text(value, register)
    dtype = register.data_type
    if dtype is DataType.BOOL or dtype.is_float:
        return encode(value, register, sf)
    low, high = _range(dtype)
    power = 10.0**sf if register.scale_register else 1.0
    raw = round((value - register.offset) / register.scale / power)
    if low <= raw <= high:
        return encode(value, register, sf)
    raw = min(max(raw, low), high)
    return encode(raw * register.scale * power + register.offset, register, sf)


def _range(dtype: DataType) -> tuple[int, int]:
    """The raw integers a type carries."""
    bits = dtype.bits
    signed = dtype in (
        DataType.INT16,
        DataType.INT32,
        DataType.INT64,
        DataType.INT8_HIGH,
        DataType.INT8_LOW,
    )
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def scale_factor_for(values: Sequence[tuple[float, Register]]) -> int:
    """The smallest power of ten (from -3 to 10) at which every value fits its register's
    type, leaving room for the type's "not available" pattern."""
    for sf in range(-3, 11):
        if all(_fits(value, reg, sf) for value, reg in values):
            return sf
    return 10


def _fits(value: float, register: Register, sf: int) -> bool:
    if register.data_type.is_float:
        return True
    low, high = _range(register.data_type)
    raw = round((value - register.offset) / register.scale / 10.0**sf)
    return low < raw < high


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
        self._scaled = any(r.scale_register for r in self.registers)
        self.step_s = step_s
        self._layouts = _layouts(self.registers, max_gap)
        self._images: dict[int, tuple[int, bytes | bytearray]] = {}

    def values_at(self, t_s: float) -> dict[str, float | str]:
        """The physical value (or text) of every register at time `t_s` (seconds since the
        epoch); a scale-factor register holds its power of ten."""
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
                image[offset] = encode(float(values[reg.name]), reg)[0]
        else:
            words = [0] * layout.size
            swapped = self.swapped(t_s)
            for reg, offset in layout.slots:
                sf = int(values[reg.scale_register]) if reg.scale_register else 0
                value_words = _words(values[reg.name], reg, sf)
                if swapped:
                    value_words.reverse()
                words[offset : offset + reg.words] = value_words
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

    def values_at(self, t_s: float) -> dict[str, float | str]:
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
    # a layout other than the profile's, as a misconfigured or differently wired device
    # serves it: every multi-register number in this order, every address moved by `shift`
    order: Order | None = None
    shift: int = 0

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

    def served(self) -> tuple[Register, ...]:
        """The registers as the device serves them: in its layout, with a SunSpec profile's
        marker and model headers (named `_sunspec.<address>`)."""
        served = []
        for reg in self.registers:
            order = self.order if self.order is not None and reg.words > 1 else reg.order
            if reg.data_type is DataType.STRING:
                order = reg.order  # text is sent as it is, whatever the numbers' order
            if self.shift or order is not reg.order:
                reg = replace(reg, address=reg.address + self.shift, order=order)
            served.append(reg)
        chain = None if self.profile is None else self.profile.sunspec
        if chain is not None:
            header = [(chain.base, 0x5375), (chain.base + 1, 0x6E53)]
            for address, model_id, length in chain.headers():
                header += [(address, model_id), (address + 1, length)]
            served += [
                Register(f"_sunspec.{a}", a + self.shift, 3, DataType.UINT16, missing=frozenset())
                for a, _ in header
            ]
        return tuple(served)

    def constants(self) -> dict[str, float]:
        """The values of the SunSpec marker and model headers `served` adds."""
        chain = None if self.profile is None else self.profile.sunspec
        if chain is None:
            return {}
        out = {f"_sunspec.{chain.base}": 0x5375, f"_sunspec.{chain.base + 1}": 0x6E53}
        for address, model_id, length in chain.headers():
            out[f"_sunspec.{address}"] = model_id
            out[f"_sunspec.{address + 1}"] = length
        return {k: float(v) for k, v in out.items()}


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
            spec.served(),
            step_s=spec.step_s,
            max_gap=max(profile.limits.max_gap, DEFAULT_MAX_GAP),
        )
        self.spec = spec
        self.physics = MeterPhysics.from_seed(spec.seed, phase_count(profile.registers))
        names = {r.name for r in profile.registers}
        self._pv = any(n in names for n in PV_NAMES) or "dcPower1" in names
        self._trackers = sum(1 for n in names if re.fullmatch(r"dcPower\d+", n))
        self.pv = PvArray.from_seed(spec.seed) if is_inverter(names) else None
        modelled = set(self._quantities(COMMISSIONED_S, COMMISSIONED_S))
        if self._pv:
            modelled |= set(pv_quantities(spec.seed, COMMISSIONED_S, self._trackers))
        self._constants: dict[str, float | str] = dict(spec.constants())
        if "m160.N" in names:  # the MPPT model counts its trackers
            self._constants["m160.N"] = float(self._trackers)
        self._text = {r.name: _text_value(r, spec) for r in self.registers if r.is_text}
        self._states = [
            r for r in self.registers if {"MPPT", "SLEEPING"} <= {name for _, name in r.enum}
        ]
        sfs = {r.scale_register for r in self.registers if r.scale_register}
        self._shares = {sf: [r for r in self.registers if r.scale_register == sf] for sf in sfs}
        # (register, model quantity or None, unit factor or the fallback constant)
        self._map: list[tuple[Register, str | None, float]] = []
        for reg in self.registers:
            if reg.name in self._constants or reg.name in self._text or reg.name in sfs:
                continue
            # a second SunSpec model of an id names its points name_2: the same quantity
            quantity = re.sub(r"_\d+$", "", reg.name)
            canonical = UNITS.get(quantity, DERIVED_UNITS.get(quantity))
            if canonical is None or quantity not in modelled:
                self._map.append((reg, None, fallback_value(reg, spec.seed)))
            else:
                self._map.append((reg, quantity, unit_factor(canonical, reg.unit)))

    @property
    def unmodelled(self) -> list[str]:
        """The registers that read a constant because the model does not know their name."""
        return [reg.name for reg, name, _ in self._map if name is None]

    def values_at(self, t_s: float) -> dict[str, float | str]:
        t_q = step_index(t_s, self.step_s) * self.step_s
        since = counting_since(t_q, (w.last_end(t_q) for w in self.spec.energy_resets))
        q = self._quantities(t_q, since)
        if self._pv:
            q |= pv_quantities(self.spec.seed, t_q, self._trackers, since)
        out: dict[str, float | str] = {
            reg.name: factor if name is None else q[name] * factor
            for reg, name, factor in self._map
        }
        self._distort(out, t_q)
        for sf, regs in self._shares.items():
            out[sf] = float(scale_factor_for([(float(out[r.name]), r) for r in regs]))
        out.update(self._constants)
        out.update(self._text)
        if self._pv:
            # an inverter's state follows the light: tracking by day, asleep at night
            for reg in self._states:
                out[reg.name] = "MPPT" if q["dcPower"] > 0 else "SLEEPING"
        return out

    def _quantities(self, t_s: float, since: float) -> dict[str, float]:
        """The grid model's quantities with the derived ones (PV side for an inverter)."""
        return derived_quantities(quantities(self.physics, t_s, since), self.pv, t_s, since)

    def _distort(self, values: dict[str, float | str], t_q: float) -> None:
        """The value faults active at `t_q` (zeroed or offset numbers)."""
        for fault in self.spec.distortions:
            if fault.kind != "word_order" and fault.active(t_q):
                for reg in self.registers:
                    if not reg.is_text and fault.hits(reg.name, reg.is_counter):
                        value = float(values[reg.name])
                        values[reg.name] = 0.0 if fault.kind == "zero" else value + fault.add

    def swapped(self, t_s: float) -> bool:
        t_q = step_index(t_s, self.step_s) * self.step_s
        return any(f.kind == "word_order" and f.active(t_q) for f in self.spec.distortions)


def _text_value(register: Register, spec: MeterSpec) -> str:
    """The fixed text a text register serves."""
    if register.enum:
        return register.enum[0][1]
    if register.bits:
        return ""
    chain = None if spec.profile is None else spec.profile.sunspec
    given = {"maker": chain.maker, "model": chain.model} if chain else {}
    text = given.get(register.name) or f"{register.name}-{spec.seed}"
    return text.encode()[: 2 * register.length].decode(errors="ignore")


def make_meter(spec: MeterSpec) -> RegisterMapMeter:
    """The device that serves `spec`."""
    if spec.profile is None:
        return VirtualMeter(seed=spec.seed, step_s=spec.step_s)
    return ProfileMeter(spec)


def expected(meter: int | MeterSpec, tick_ms: int, step_s: float = 1.0) -> dict[str, float]:
    """The fields a reading of a meter at `tick_ms` must contain, exactly as decoded.

    `meter` is a `MeterSpec`, or a seed for the original virtual meter (then `step_s` applies).
    Values go through the codec round trip (float32 rounding, integer scaling, scale-factor
    registers), so they compare equal (==) with what a client decodes; "not available" values
    and text are left out (`expected_text`).
    """
    return _expected(meter, tick_ms, step_s)[0]


def expected_text(meter: MeterSpec, tick_ms: int) -> dict[str, str]:
    """The text values (`meter_info`) a reading of a meter at `tick_ms` must contain."""
    return _expected(meter, tick_ms, meter.step_s)[1]


def _expected(
    meter: int | MeterSpec, tick_ms: int, step_s: float
) -> tuple[dict[str, float], dict[str, str]]:
    if isinstance(meter, int):
        meter = MeterSpec(seed=meter, step_s=step_s)
    device = make_meter(meter)
    t_s = tick_ms / 1000
    values: dict[str, float] = {}
    text: dict[str, str] = {}
    # one request per register and its scale factor, as a client decodes them together
    for reg in meter.registers:
        unit = [reg] + [r for r in meter.registers if r.name == reg.scale_register]
        first = min(r.address for r in unit)
        count = max(r.end for r in unit) - first
        words = device.read(reg.function_code, first, count, t_s)
        assert not isinstance(words, int), f"{reg.name} is not readable"
        decoder = RequestDecoder.build(first, count, tuple(unit))
        got, _missing = decoder.decode(words)
        if reg.name in got:
            values[reg.name] = got[reg.name]
        if decoder.has_text:
            text.update(decoder.decode_text(words)[0])
    return values, text
