"""Plausibility limits of a meter type and the roles of its fields: what the writer checks a
reading against before storing it as a clean value (`writer.plausibility`).

A type's limits come from its profile's optional `[plausibility]` table and the `meter_types`
row; a meter's own non-NULL columns in `energy_meters` override them one by one. What is not
given anywhere is the default:

    max_power_w        300000   rated maximum power (W, var or VA) of the meter
    voltage_min_v          80   phase-to-neutral voltage range; line-to-line is √3 times it;
    voltage_max_v         300   an exact 0 is a phase that is not connected and passes
    frequency_min_hz       40
    frequency_max_hz       70
    power_factor_min       -1
    power_factor_max        1
    step_margin             2   a counter may step by at most max power x the time since its
                                previous reading x this, plus STEP_SLACK_WH
    power_tolerance       0.1   | |P| - V·I·|PF| | may be at most this share of V·I, plus
                                POWER_SLACK_W (per phase, where all four are read)

The limits travel in the job (only those that differ from the defaults) and the worker copies
them, with the roles of the plan's fields (`Roles`, derived from the registers' units and
names), into the reading as its `guard`: the writer has no database access.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from emm.errors import ConfigError
from emm.registers import Register

STEP_SLACK_WH = 100.0  # the last digit of the coarsest counters (0.1 kWh)
POWER_SLACK_W = 25.0  # rounding of V, I and PF on a small load
FREQUENCY_BOUNDS_HZ = (40.0, 70.0)  # no grid runs outside: a type may only narrow them


class Plausibility(msgspec.Struct, frozen=True, omit_defaults=True):
    """The limits a meter's readings are checked against (defaults in the module docstring)."""

    max_power_w: float = 300_000.0
    voltage_min_v: float = 80.0
    voltage_max_v: float = 300.0
    frequency_min_hz: float = FREQUENCY_BOUNDS_HZ[0]
    frequency_max_hz: float = FREQUENCY_BOUNDS_HZ[1]
    power_factor_min: float = -1.0
    power_factor_max: float = 1.0
    step_margin: float = 2.0
    power_tolerance: float = 0.1

    def __post_init__(self) -> None:
        for name in PLAUSIBILITY_KEYS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{name} {value!r} is not a number")
            if not math.isfinite(value):
                raise ConfigError(f"{name} {value!r} is not a finite number")
        checks = (
            (self.max_power_w > 0, "max_power_w must be more than 0"),
            (0 <= self.voltage_min_v < self.voltage_max_v, "voltage range is empty or negative"),
            (
                FREQUENCY_BOUNDS_HZ[0] <= self.frequency_min_hz < self.frequency_max_hz
                and self.frequency_max_hz <= FREQUENCY_BOUNDS_HZ[1],
                "frequency range must lie within 40..70 Hz",
            ),
            (
                -1 <= self.power_factor_min < self.power_factor_max <= 1,
                "power factor range must lie within -1..1",
            ),
            (self.step_margin >= 1, "step_margin must be 1 or more"),
            (0 < self.power_tolerance <= 1, "power_tolerance must be in (0, 1]"),
        )
        for ok, problem in checks:
            if not ok:
                raise ConfigError(problem)

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], base: Plausibility | None = None
    ) -> Plausibility:
        """`base` (the defaults) with the non-null limits of `data` (a profile's
        `[plausibility]` table, a `meter_types` or `energy_meters` row); ConfigError names
        what is wrong."""
        unknown = set(data) - set(PLAUSIBILITY_KEYS)
        if unknown:
            raise ConfigError(f"unknown plausibility key(s) {', '.join(sorted(unknown))}")
        given = {k: v for k, v in data.items() if v is not None}
        if not given:
            return base or DEFAULT_PLAUSIBILITY
        merged = msgspec.structs.asdict(base or DEFAULT_PLAUSIBILITY) | given
        try:
            return cls(**{k: float(v) if type(v) is int else v for k, v in merged.items()})
        except TypeError as exc:
            raise ConfigError(str(exc)) from None


PLAUSIBILITY_KEYS: tuple[str, ...] = Plausibility.__struct_fields__
DEFAULT_PLAUSIBILITY = Plausibility()


class Roles(msgspec.Struct, frozen=True, omit_defaults=True):
    """Which fields of a plan are what, for the checks: voltages (phase-to-neutral and
    line-to-line), frequencies, power factors, instantaneous powers (W, var, VA; `kilo_powers`
    in kW, kvar, kVA), per-phase quadruples (P, V, I, PF) read together, and the counters of
    energy stepped against the maximum power (Wh, varh, VAh; `kilo_energies` in kWh...)."""

    voltages: tuple[str, ...] = ()
    line_voltages: tuple[str, ...] = ()
    frequencies: tuple[str, ...] = ()
    power_factors: tuple[str, ...] = ()
    powers: tuple[str, ...] = ()
    kilo_powers: tuple[str, ...] = ()
    phases: tuple[tuple[str, str, str, str], ...] = ()
    energies: tuple[str, ...] = ()
    kilo_energies: tuple[str, ...] = ()

    def factor(self, name: str) -> float:
        """What a value of the field is in W, var, VA or their hours."""
        return 1000.0 if name in self.kilo_powers or name in self.kilo_energies else 1.0

    @classmethod
    def of(cls, registers: Iterable[Register]) -> Roles:
        """The roles of these registers, by unit and by the profiles' names."""
        regs = {r.name: r for r in registers}
        units = {name: r.unit.strip().lower() for name, r in regs.items()}
        voltages = [n for n, u in units.items() if u == "v" and _VOLTAGE.fullmatch(n)]
        line = [n for n in voltages if _LINE.search(n)]
        return cls(
            voltages=tuple(n for n in voltages if n not in line),
            line_voltages=tuple(line),
            frequencies=tuple(n for n, u in units.items() if u == "hz"),
            power_factors=tuple(n for n, u in units.items() if not u and _PF.fullmatch(n)),
            powers=tuple(n for n, u in units.items() if u in _POWER_UNITS),
            kilo_powers=tuple(n for n, u in units.items() if u in _KILO_POWER_UNITS),
            phases=_phases(units),
            energies=tuple(n for n, u in units.items() if u in _ENERGY_UNITS),
            kilo_energies=tuple(n for n, u in units.items() if u in _KILO_ENERGY_UNITS),
        )


NO_ROLES = Roles()


class Guard(msgspec.Struct, frozen=True, omit_defaults=True):
    """What a reading is checked against: its meter's limits and the roles of its fields."""

    limits: Plausibility = DEFAULT_PLAUSIBILITY
    roles: Roles = NO_ROLES


_VOLTAGE = re.compile(r"(?i)(average)?voltage(L[123]){0,2}(LN|LL)?")
_LINE = re.compile(r"L[123]L[123]$|LL$")
_PF = re.compile(r"(?i)(total)?power_?factor(L[123])?")
_POWER_UNITS = frozenset({"w", "var", "va"})
_KILO_POWER_UNITS = frozenset({"kw", "kvar", "kva"})
_ENERGY_UNITS = frozenset({"wh", "varh", "vah"})
_KILO_ENERGY_UNITS = frozenset({"kwh", "kvarh", "kvah"})


def _phases(units: dict[str, str]) -> tuple[tuple[str, str, str, str], ...]:
    """The (P, V, I, PF) of each phase whose four are read; a single-phase map's totals
    are its phase's."""
    phases = []
    single = "voltageL2" not in units and "voltageL3" not in units
    for n in (1, 2, 3):
        p, v, i, pf = f"activePowerL{n}", f"voltageL{n}", f"currentL{n}", f"powerFactorL{n}"
        if single and n == 1:
            p = p if p in units else "activePower"
            pf = pf if pf in units else "totalPowerFactor"
        watts = _POWER_UNITS | _KILO_POWER_UNITS
        wanted = ((p, watts), (v, {"v"}), (i, {"a"}), (pf, {""}))
        if all(units.get(name) in allowed for name, allowed in wanted):
            phases.append((p, v, i, pf))
    return tuple(phases)
