"""The plausibility guard: values a meter cannot have measured are kept out of the record.

Each reading is checked against the guard it carries (`emm.plausibility`: its meter's limits
and the roles of its fields); a reading without one (from an older worker) passes unchecked.

- A voltage outside its range (line-to-line: √3 times it; an exact 0, a phase not connected,
  passes), a frequency or a power factor outside its range, a power above the maximum power.
- Per phase where P, V, I and PF are all read: | |P| - V·I·|PF| | above `power_tolerance`
  x V·I + POWER_SLACK_W. P and I are flagged (V and PF were checked on their own; which of the
  two is wrong cannot be told).
- A counter of energy that stepped by more than max power x the time since its previous clean
  value x `step_margin` + STEP_SLACK_WH.
- A counter that went down without a reboot. The writer sees a reboot as a failed reading of
  the meter since its previous clean value (a rebooting meter does not answer; a tick merely
  missed, a job dropped as late, is no reboot); for a meter it has not seen since it started,
  as a missed tick. A drop also counts as a restart when it holds at the next reading (above
  0 and not below the value that went down): the meter restarted counting. Either way the
  counter is stored as a restart (`counter_resets`, its delta the new value), as
  `writer.counters` says. Any other drop, a transient zero, is suspect. Likewise a step that
  holds (the next reading goes on from it at a plausible pace) is taken as the counter's new
  level (its whole step then counts in that delta: a replaced meter's new counter).

What happens to a suspect value: it is taken out of the `energy` point and written instead to
the `energy_suspect` measurement (same tags, same time, the value as read), so no panel, sum or
`last()` over `energy` sees it, while the raw value is kept for diagnosis (a wrong word order
shows there). A suspect counter is not remembered for the deltas: the next delta is taken from
its last clean value, so the increment across the suspect tick goes to the next clean one and
energy per day stays exact. The `meter_status` point of every checked reading has `suspect`
(how many fields) and, when there are any, `suspect_fields` (their names, comma separated).
One warning per meter per hour (`LOG_EVERY_S`); it counts the suspect readings it stood for.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import msgspec

from emm.messages import Reading
from emm.plausibility import POWER_SLACK_W, STEP_SLACK_WH, Guard
from writer.counters import CounterWatch

log = logging.getLogger(__name__)

LOG_EVERY_S = 3600.0  # one warning per meter per this long
_SQRT3 = math.sqrt(3.0)
_PF_ROUNDING = 1e-6  # a float register's 1.0 may decode a hair above


def value_problems(fields: dict[str, float], guard: Guard) -> dict[str, str]:
    """The fields whose value no meter can have measured, with why (pure)."""
    limits, roles = guard.limits, guard.roles
    out: dict[str, str] = {}

    def outside(names: Iterable[str], low: float, high: float, unit: str, slack: float) -> None:
        for name in names:
            value = fields.get(name)
            if value is None or (unit == "V" and value == 0):
                continue
            if not low - slack <= value <= high + slack:
                value_unit = f"{value:g} {unit}".rstrip()
                out[name] = f"{value_unit} outside {low:g}..{high:g}{unit and ' ' + unit}"

    outside(roles.voltages, limits.voltage_min_v, limits.voltage_max_v, "V", 0.0)
    v_low, v_high = limits.voltage_min_v * _SQRT3, limits.voltage_max_v * _SQRT3
    outside(roles.line_voltages, round(v_low, 1), round(v_high, 1), "V", 0.0)
    outside(roles.frequencies, limits.frequency_min_hz, limits.frequency_max_hz, "Hz", 0.0)
    pf_low, pf_high = limits.power_factor_min, limits.power_factor_max
    outside(roles.power_factors, pf_low, pf_high, "", _PF_ROUNDING)
    for name in (*roles.powers, *roles.kilo_powers):
        value = fields.get(name)
        if value is not None and abs(value * roles.factor(name)) > limits.max_power_w:
            out[name] = f"{value:g} above the maximum power {limits.max_power_w:g} W"
    for p, v, i, pf in roles.phases:
        if any(name in out or name not in fields for name in (p, v, i, pf)):
            continue
        power = abs(fields[p] * roles.factor(p))
        volt_amperes = abs(fields[v] * fields[i])
        expected = volt_amperes * abs(fields[pf])
        if abs(power - expected) > limits.power_tolerance * volt_amperes + POWER_SLACK_W:
            why = f"|P| {power:.6g} W is not V·I·|PF| {expected:.6g} W"
            out.setdefault(p, why)
            out.setdefault(i, why)
    return out


class PlausibilityGuard:
    """Checks readings before their counters are taken (`check`), with what it must remember:
    each meter's latest ticks up and down, the counters' unexplained drops and steps, when
    each meter was last logged."""

    def __init__(self, counters: CounterWatch, clock: Callable[[], float] = time.monotonic) -> None:
        self._counters = counters
        self._clock = clock
        self._up: dict[int, int] = {}  # meter -> its latest tick with values
        self._down: dict[int, int] = {}  # meter -> its latest tick without
        self._pending: dict[tuple[int, str], tuple[int, float]] = {}  # suspect (tick, value)
        self._logged: dict[int, tuple[float, int]] = {}  # meter -> (logged at, not logged since)

    def check(self, reading: Reading) -> dict[str, str]:
        """The reading's suspect fields, with why (none when it carries no guard)."""
        guard = reading.guard
        meter, tick = reading.meter.id, reading.tick_ms
        if not reading.status.up or not reading.fields:
            self._down[meter] = max(self._down.get(meter, tick), tick)
        if guard is None or not reading.fields:
            return {}
        suspect = value_problems(reading.fields, guard)
        names = [n for n in reading.counters if n in reading.fields and n not in suspect]
        suspect.update(self._counter_problems(reading, names, guard))
        self._up[meter] = max(self._up.get(meter, tick), tick)
        if suspect:
            self._log(reading, suspect)
        return suspect

    def _counter_problems(self, reading: Reading, names: list[str], guard: Guard) -> dict[str, str]:
        out: dict[str, str] = {}
        meter, tick = reading.meter.id, reading.tick_ms
        for name in names:
            previous = self._counters.previous(meter, tick, name)
            if previous is None:
                continue  # nothing known before it: its first reading gives no delta either
            why = self._counter_problem(reading, name, previous, guard)
            key = (meter, name)
            if why is None:
                self._pending.pop(key, None)
            else:
                out[name] = why
                self._pending[key] = (tick, reading.fields[name])
        return out

    def _counter_problem(
        self, reading: Reading, name: str, previous: tuple[int, float], guard: Guard
    ) -> str | None:
        """Why a counter's value is suspect after its previous clean one, or None."""
        meter, tick, value = reading.meter.id, reading.tick_ms, reading.fields[name]
        before_ms, before = previous
        pending = self._pending.get((meter, name))
        held = pending is not None and pending[0] < tick and value >= pending[1]
        if value < before:
            # (a drop held: the pending value is the drop's, below `before` as `value` is)
            if self._rebooted(meter, before_ms, tick) or (held and value > 0):
                return None
            return f"went down from {before:g} to {value:g} without a reboot"
        if name not in guard.roles.energies and name not in guard.roles.kilo_energies:
            return None
        limits = guard.limits
        if held and pending is not None and pending[1] > before:
            before_ms, before = pending  # a step that holds: the counter's new level
        factor = guard.roles.factor(name)
        step_wh = (value - before) * factor
        allowed_wh = (
            limits.max_power_w * (tick - before_ms) / 3_600_000 * limits.step_margin + STEP_SLACK_WH
        )
        if step_wh <= allowed_wh:
            return None
        return (
            f"stepped {step_wh:.6g} Wh in {(tick - before_ms) / 1000:g} s "
            f"(at most {allowed_wh:.6g} Wh)"
        )

    def _rebooted(self, meter: int, before_ms: int, tick: int) -> bool:
        """Whether the meter failed a reading between its counter's previous clean value and
        `tick` (for a meter not seen since the writer started: missed a tick)."""
        if meter not in self._up:
            return self._counters.ticks_between(before_ms, tick) > 0
        return before_ms < self._down.get(meter, 0) < tick

    def _log(self, reading: Reading, suspect: dict[str, str]) -> None:
        meter = reading.meter.id
        now = self._clock()
        logged = self._logged.get(meter)
        if logged is not None and now - logged[0] < LOG_EVERY_S:
            self._logged[meter] = (logged[0], logged[1] + 1)
            return
        self._logged[meter] = (now, 0)
        more = f" ({logged[1]} more suspect readings since the last warning)" if logged else ""
        log.warning(
            "meter %d: implausible value(s) at tick %s kept out of energy and energy_delta, "
            "stored in energy_suspect: %s%s",
            meter,
            datetime.fromtimestamp(reading.tick_ms / 1000, tz=UTC).isoformat(timespec="seconds"),
            "; ".join(f"{name} {why}" for name, why in sorted(suspect.items())),
            more if logged and logged[1] else "",
        )


def without(reading: Reading, suspect: dict[str, str]) -> Reading:
    """The reading as stored in `energy`: its suspect fields left out."""
    if not suspect:
        return reading
    fields = {n: v for n, v in reading.fields.items() if n not in suspect}
    return msgspec.structs.replace(reading, fields=fields)
