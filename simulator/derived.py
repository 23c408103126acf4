"""Quantities beyond the meter model of `simulator.physics`, kept apart from it.

Two additions, both pure functions of (seed, time) like the rest of the model:

- Direction-split powers, for meters that report what is drawn and what is fed in as two
  unsigned registers (KOSTAL KSEM: 'active power+' and 'active power-'): derived from the
  signed per-phase powers of `physics.quantities`.
- The PV side of an inverter: a daylight curve. DC power follows a half sine between sunrise
  (06:00 UTC) and sunset (18:00 UTC) and is 0 at night, the same every day (no seasons, no
  clouds), so its integral, the yield counters, has a closed form. The AC side is the DC
  power times a fixed efficiency at power factor 1, shared equally by the phases; voltages
  and frequency stay those of the grid model.

    P_dc(t) = peak · sin(π · (t - sunrise) / daylight)      for sunrise < t < sunset
    E(t0, t1) = ∫ P_dc dt, per day  peak · daylight · 2/π

`dailyYield` counts from 00:00 UTC (or the last counter reset, if later), `totalYield` from
commissioning (or that reset).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass

from simulator.physics import J_PER_KWH, PHASE_NAMES

DAY_S = 86_400.0
SUNRISE_S = 6 * 3600.0  # seconds after 00:00 UTC
DAYLIGHT_S = 12 * 3600.0
STRINGS = 2

# The canonical unit of every quantity `derived_quantities` adds (see `physics.UNITS`).
DERIVED_UNITS: dict[str, str] = {
    "pvPower": "W",
    **{f"pvPower{k}": "W" for k in range(1, STRINGS + 1)},
    **{f"pvVoltage{k}": "V" for k in range(1, STRINGS + 1)},
    **{f"pvCurrent{k}": "A" for k in range(1, STRINGS + 1)},
    "dailyYield": "kWh",
    "totalYield": "kWh",
    **{
        f"{direction}{kind}Power{phase}": unit
        for direction in ("import", "export")
        for kind, unit in (("Active", "W"), ("Reactive", "var"), ("Apparent", "VA"))
        for phase in ("", *PHASE_NAMES)
    },
}
_PV_NAMES = frozenset(name for name in DERIVED_UNITS if name.startswith("pv") or "Yield" in name)


def is_inverter(names: Iterable[str]) -> bool:
    """Whether a register map reads the PV side (then its AC side is the inverter's output)."""
    return any(name in _PV_NAMES for name in names)


@dataclass(frozen=True, slots=True)
class PvArray:
    """An inverter's PV array and conversion: drawn from its seed."""

    peak_w: float
    shares: tuple[float, ...]  # each string's part of the DC power, summing to 1
    mpp_voltages: tuple[float, ...]  # each string's voltage at full sun
    efficiency: float

    @classmethod
    def from_seed(cls, seed: int) -> PvArray:
        rng = random.Random(f"emm-simulator-pv-{seed}")
        first = rng.uniform(0.4, 0.6)
        return cls(
            peak_w=rng.uniform(3000.0, 9000.0),
            shares=(first, 1.0 - first),
            mpp_voltages=tuple(rng.uniform(300.0, 450.0) for _ in range(STRINGS)),
            efficiency=0.97,
        )

    def dc_power(self, t_s: float) -> float:
        """DC power at `t_s`: the daylight half sine, 0 at night."""
        into_day = (t_s % DAY_S) - SUNRISE_S
        if not 0.0 < into_day < DAYLIGHT_S:
            return 0.0
        return self.peak_w * math.sin(math.pi * into_day / DAYLIGHT_S)

    def dc_energy_j(self, t0_s: float, t1_s: float) -> float:
        """∫ DC power dt over [t0, t1] in joules; 0 when t1 <= t0. Never decreases in t1."""
        if t1_s <= t0_s:
            return 0.0
        return self._since_epoch(t1_s) - self._since_epoch(t0_s)

    def _since_epoch(self, t_s: float) -> float:
        days = math.floor(t_s / DAY_S)
        into_day = t_s - days * DAY_S - SUNRISE_S
        per_day = self.peak_w * DAYLIGHT_S * 2.0 / math.pi
        if into_day >= DAYLIGHT_S:  # after sunset: whole days exactly, so nights never wobble
            return (days + 1) * per_day
        angle = math.pi * max(into_day, 0.0) / DAYLIGHT_S
        return days * per_day + self.peak_w * DAYLIGHT_S / math.pi * (1.0 - math.cos(angle))


def pv_quantities(
    array: PvArray, grid: dict[str, float], t_s: float, since_s: float
) -> dict[str, float]:
    """The inverter's PV side and AC output at `t_s`, by register name (canonical units).

    `grid` holds the grid model's quantities (voltages per phase); counters count from
    `since_s` (commissioning or the last reset).
    """
    dc = array.dc_power(t_s)
    sun = dc / array.peak_w
    out: dict[str, float] = {"pvPower": dc}
    for k, (share, v_mpp) in enumerate(zip(array.shares, array.mpp_voltages, strict=True), 1):
        voltage = v_mpp * (0.9 + 0.1 * sun) if dc > 0 else 0.0
        out[f"pvPower{k}"] = dc * share
        out[f"pvVoltage{k}"] = voltage
        out[f"pvCurrent{k}"] = dc * share / voltage if voltage else 0.0
    ac = dc * array.efficiency
    phases = [name for name in PHASE_NAMES if f"voltage{name}" in grid]
    for suffix, power in (("", ac), *((name, ac / len(phases)) for name in phases)):
        out[f"activePower{suffix}"] = power
        out[f"apparentPower{suffix}"] = power
        out[f"reactivePower{suffix}"] = 0.0
        out[f"powerFactor{suffix}"] = 1.0
    for name in phases:
        out[f"current{name}"] = out[f"activePower{name}"] / grid[f"voltage{name}"]
    midnight = math.floor(t_s / DAY_S) * DAY_S
    to_kwh = array.efficiency / J_PER_KWH
    out["dailyYield"] = array.dc_energy_j(max(midnight, since_s), t_s) * to_kwh
    out["totalYield"] = array.dc_energy_j(since_s, t_s) * to_kwh
    return out


def direction_quantities(q: dict[str, float]) -> dict[str, float]:
    """Import ('+') and export ('-') parts of each power in `q`: what flows that way, else 0.

    Apparent power counts in the direction of the active power it goes with.
    """
    out: dict[str, float] = {}
    for phase in ("", *PHASE_NAMES):
        if f"activePower{phase}" not in q:
            continue
        p, s = q[f"activePower{phase}"], q[f"apparentPower{phase}"]
        reactive = q[f"reactivePower{phase}"]
        out[f"importActivePower{phase}"] = max(p, 0.0)
        out[f"exportActivePower{phase}"] = max(-p, 0.0)
        out[f"importReactivePower{phase}"] = max(reactive, 0.0)
        out[f"exportReactivePower{phase}"] = max(-reactive, 0.0)
        out[f"importApparentPower{phase}"] = s if p >= 0 else 0.0
        out[f"exportApparentPower{phase}"] = s if p < 0 else 0.0
    return out


def derived_quantities(
    grid: dict[str, float], array: PvArray | None, t_s: float, since_s: float
) -> dict[str, float]:
    """What this module adds to (and, for an inverter, overrides in) the grid model's
    quantities `grid` at `t_s`."""
    out = dict(grid)
    if array is not None:
        out.update(pv_quantities(array, grid, t_s, since_s))
    split = direction_quantities(out)
    # a meter keeps the grid model's own totals (importActivePower sums the phases' parts)
    out.update(split if array is not None else {k: v for k, v in split.items() if k not in grid})
    return out
