"""The electrical model of a virtual meter: consistent quantities, a pure function of (seed, time).

Each phase draws active power from a sinusoid, `P(t) = mean + amplitude * sin(2πt/period + phase)`,
so every energy counter has a closed form (the integral of P, or of its positive or negative part)
and is a pure function of time. Voltage wanders around 230 V, the power factor is constant per
phase (its sign follows the direction of the power, as Eastron meters report it) and the rest
follows from those three:

    I = |P| / (V·pf)      PF = ±pf      S = V·I = |P| / pf      Q = |P|·tan(acos pf) ≥ 0 (inductive)

so P = V·I·PF and S² = P² + Q² per phase; totals are sums of the phases, total PF = P/S.
Line-to-line voltages assume phasors 120° apart. Frequency is grid-wide (the same for every meter).

Energy counts from `COMMISSIONED_S` (or from the end of the last reboot that reset the counters):
import from positive power, export from negative power, reactive import from Q (export is 0).
Not exact integrals or not modelled, so only plausible (and still deterministic): `ampereHours`
and the current demands divide by each phase's mean voltage; the "max demand" registers are the
largest value the demand can reach; `neutralCurrentDemand` is the present neutral current; THD
values are slow sinusoids unrelated to the rest; voltage phase angles are 0/-120/120°,
`phaseSequence` is 1, and loads are inductive, so capacitive and export reactive energy stay 0.
"""

from __future__ import annotations

import cmath
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass

TWO_PI = 2.0 * math.pi
NOMINAL_VOLTAGE_V = 230.0
NOMINAL_FREQUENCY_HZ = 50.0
COMMISSIONED_S = 1_577_836_800.0  # 2020-01-01T00:00:00Z: the counters start counting here
RESETTABLE_FROM_S = 1_704_067_200.0  # 2024-01-01T00:00:00Z: last reset of "resettable" counters
DEMAND_PERIOD_S = 3600.0  # the demand registers average over the last hour (Eastron's default)
J_PER_KWH = 3_600_000.0
PHASE_NAMES = ("L1", "L2", "L3")
LINE_PAIRS = (("L1", "L2"), ("L2", "L3"), ("L3", "L1"))
_VOLTAGE_ANGLE_DEG = (0.0, -120.0, 120.0)

# The grid frequency: the same for every meter, a slow wander plus a faster wobble.
_FREQUENCY = (
    (0.04, 307.0, 0.3),
    (0.015, 53.0, 1.1),
)


@dataclass(frozen=True, slots=True)
class Wave:
    """`mean + amplitude * sin(2π t / period_s + phase)`, with closed-form integrals."""

    mean: float
    amplitude: float
    period_s: float
    phase: float

    def __post_init__(self) -> None:
        if self.amplitude < 0 or self.period_s <= 0:
            raise ValueError("a wave needs amplitude >= 0 and period_s > 0")

    @property
    def omega(self) -> float:
        return TWO_PI / self.period_s

    def at(self, t_s: float) -> float:
        return self.mean + self.amplitude * math.sin(self.omega * t_s + self.phase)

    def integral(self, t0_s: float, t1_s: float) -> float:
        """∫ wave dt over [t0, t1]."""
        w = self.omega
        return self.mean * (t1_s - t0_s) - self.amplitude / w * (
            math.cos(w * t1_s + self.phase) - math.cos(w * t0_s + self.phase)
        )

    def positive_integral(self, t0_s: float, t1_s: float) -> float:
        """∫ max(wave, 0) dt over [t0, t1]; 0 when t1 <= t0."""
        if t1_s <= t0_s:
            return 0.0
        w = self.omega
        return (self._g(w * t1_s + self.phase) - self._g(w * t0_s + self.phase)) / w

    def negative_integral(self, t0_s: float, t1_s: float) -> float:
        """∫ max(-wave, 0) dt over [t0, t1] (a positive number); 0 when t1 <= t0."""
        # -mean - amplitude·sin(x) = -mean + amplitude·sin(x + π): the mirrored wave's positive
        # part, computed the same monotone way (not as positive - net, whose rounding wobbles).
        mirrored = Wave(-self.mean, self.amplitude, self.period_s, self.phase + math.pi)
        return mirrored.positive_integral(t0_s, t1_s)

    def _g(self, x: float) -> float:
        """∫₀ˣ max(mean + amplitude·sin u, 0) du, computed so that it never decreases in x."""
        a, b = self.mean, self.amplitude
        if a <= -b:
            return 0.0
        if a >= b:
            return a * x - b * math.cos(x) + b
        periods = math.floor(x / TWO_PI)
        rest = min(max(x - periods * TWO_PI, 0.0), TWO_PI)
        per_period = self._partial(TWO_PI)
        # (whole periods + fraction) * per_period: exact at period boundaries, so monotone.
        return (periods + self._partial(rest) / per_period) * per_period

    def _partial(self, r: float) -> float:
        """∫₀ʳ max(mean + amplitude·sin u, 0) du for 0 <= r <= 2π, when the wave changes sign."""
        a, b = self.mean, self.amplitude
        alpha = math.asin(-a / b)  # sin u > -a/b on (alpha, π - alpha), modulo 2π
        if alpha >= 0:
            intervals: tuple[tuple[float, float], ...] = ((alpha, math.pi - alpha),)
        else:
            intervals = ((0.0, math.pi - alpha), (TWO_PI + alpha, TWO_PI))
        total = 0.0
        for start, end in intervals:
            if r <= start:
                break
            stop = min(r, end)
            total += (a * stop - b * math.cos(stop)) - (a * start - b * math.cos(start))
        return max(total, 0.0)


@dataclass(frozen=True, slots=True)
class Phase:
    """One phase of a meter: its voltage and active power over time and its power factor."""

    voltage: Wave
    power: Wave
    power_factor: float  # magnitude, 0 < pf <= 1
    thd_voltage: Wave
    thd_current: Wave

    @property
    def reactive_ratio(self) -> float:
        """Q / |P| = tan(acos pf)."""
        pf = self.power_factor
        return math.sqrt(max(0.0, 1.0 - pf * pf)) / pf


@dataclass(frozen=True, slots=True)
class MeterPhysics:
    """The electrical behaviour of one virtual meter, drawn from its seed."""

    seed: int
    phases: tuple[Phase, ...]

    @classmethod
    def from_seed(cls, seed: int, phases: int = 3) -> MeterPhysics:
        """A meter's behaviour: deterministic in `seed` (same on every platform and run).

        Every fourth meter (seed % 4 == 3) is a prosumer whose power changes sign (it exports).
        """
        if phases not in (1, 3):
            raise ValueError("a meter has 1 or 3 phases")
        rng = random.Random(f"emm-simulator-meter-{seed}")
        prosumer = seed % 4 == 3
        drawn = []
        for _ in range(phases):
            voltage = Wave(
                mean=NOMINAL_VOLTAGE_V + rng.uniform(-2.0, 2.0),
                amplitude=rng.uniform(1.0, 4.0),
                period_s=rng.uniform(300.0, 1800.0),
                phase=rng.uniform(0.0, TWO_PI),
            )
            if prosumer:
                mean, amplitude = rng.uniform(-800.0, 600.0), rng.uniform(1500.0, 3000.0)
            else:
                mean = rng.uniform(200.0, 2500.0)
                amplitude = mean * rng.uniform(0.2, 0.9)
            power = Wave(mean, amplitude, rng.uniform(900.0, 7200.0), rng.uniform(0.0, TWO_PI))
            drawn.append(
                Phase(
                    voltage=voltage,
                    power=power,
                    power_factor=rng.uniform(0.80, 0.99),
                    thd_voltage=Wave(2.0, 0.8, rng.uniform(600.0, 3600.0), rng.uniform(0, TWO_PI)),
                    thd_current=Wave(12.0, 6.0, rng.uniform(600.0, 3600.0), rng.uniform(0, TWO_PI)),
                )
            )
        return cls(seed=seed, phases=tuple(drawn))


def frequency_hz(t_s: float) -> float:
    """The grid frequency at `t_s` (the same for every meter)."""
    return NOMINAL_FREQUENCY_HZ + sum(
        amplitude * math.sin(TWO_PI * t_s / period + phase)
        for amplitude, period, phase in _FREQUENCY
    )


def counting_since(t_s: float, resets: Iterable[float | None] = ()) -> float:
    """When the energy counters last started from zero: commissioning or the latest reset."""
    start = COMMISSIONED_S
    for reset in resets:
        if reset is not None and start < reset <= t_s:
            start = reset
    return start


# The canonical unit of every quantity `quantities` returns; registers in another prefix of
# the same unit (Wh for kWh, kW for W) are converted by `unit_factor`.
UNITS: dict[str, str] = {}


def _unit(unit: str, *names: str) -> None:
    for name in names:
        UNITS[name] = unit


def _phased(*bases: str) -> list[str]:
    """Each base name as the total and per phase: voltage, voltageL1, voltageL2, voltageL3."""
    return [f"{base}{suffix}" for base in bases for suffix in ("", *PHASE_NAMES)]


_LINES = [f"{a}{b}" for a, b in LINE_PAIRS]
_unit(
    "V",
    *_phased("voltage"),
    "averageVoltageLN",
    "averageVoltageLL",
    *(f"voltage{line}" for line in _LINES),
)
_unit(
    "A",
    *_phased("current", "currentDemand", "maxCurrentDemand"),
    "neutralCurrent",
    "averageCurrent",
    "sumCurrent",
    "neutralCurrentDemand",
    "maxNeutralCurrentDemand",
)
_unit(
    "W",
    *_phased("activePower"),
    "importActivePower",
    "exportActivePower",
    "totalActivePowerDemand",
    "maxTotalActivePowerDemand",
    "importActivePowerDemand",
    "maxImportActivePowerDemand",
    "exportActivePowerDemand",
    "maxExportActivePowerDemand",
)
_unit("var", *_phased("reactivePower"))
_unit("VA", *_phased("apparentPower"), "totalApparentPowerDemand", "maxTotalApparentPowerDemand")
_unit("Hz", "frequency")
_unit(
    "kWh",
    *_phased(
        "importActiveEnergy",
        "exportActiveEnergy",
        "netActiveEnergy",
        "totalActiveEnergy",
        "activeEnergy",
    ),
    "resettableImportActiveEnergy",
    "resettableExportActiveEnergy",
    "resettableTotalActiveEnergy",
)
_unit(
    "kvarh",
    *_phased(
        "importReactiveEnergy",
        "exportReactiveEnergy",
        "netReactiveEnergy",
        "totalReactiveEnergy",
        "reactiveEnergy",
        "inductiveReactiveEnergy",
        "capacitiveReactiveEnergy",
    ),
)
_unit(
    "kVAh",
    *_phased("importApparentEnergy", "exportApparentEnergy", "netApparentEnergy", "apparentEnergy"),
)
_unit("Ah", "ampereHours")
_unit("deg", *_phased("phaseAngle", "voltagePhaseAngle", "currentPhaseAngle"), "totalPhaseAngle")
_unit(
    "%",
    *_phased("thdVoltage", "thdCurrent"),
    "averageThdVoltageLN",
    "averageThdCurrent",
    "averageThdVoltageLL",
    *(f"thdVoltage{line}" for line in _LINES),
)
_unit("", *_phased("powerFactor", "cosPhi", "quadrant"), "totalPowerFactor", "phaseSequence")

_PREFIX = {"": 1.0, "k": 1e3, "M": 1e6, "m": 1e-3}
_BASE_UNITS = ("Wh", "varh", "VAh", "W", "var", "VA", "V", "Ah", "A", "Hz")


def _split_unit(unit: str) -> tuple[float, str] | None:
    for base in _BASE_UNITS:
        if unit.endswith(base) and unit[: -len(base)] in _PREFIX:
            return _PREFIX[unit[: -len(base)]], base
    return None


def unit_factor(canonical: str, unit: str) -> float:
    """What a value in `canonical` units is multiplied by to be in `unit` (1 when unrelated)."""
    if canonical == unit:
        return 1.0
    a, b = _split_unit(canonical), _split_unit(unit)
    if a is None or b is None or a[1] != b[1]:
        return 1.0
    return a[0] / b[0]


def _angle_deg(z: complex) -> float:
    return math.degrees(cmath.phase(z)) if z else 0.0


def _quadrant(p: float, q: float) -> float:
    if p >= 0:
        return 1.0 if q >= 0 else 4.0
    return 2.0 if q >= 0 else 3.0


_TOTAL_KEYS = (
    *("p", "q", "s", "i", "imp", "exp", "rimp", "aimp", "aexp", "ah", "imp_r", "exp_r"),
    *("d_net", "d_imp", "d_exp", "d_app", "max_imp", "max_exp", "max_app", "thd_v", "thd_i"),
)


def quantities(
    meter: MeterPhysics, t_s: float, energy_since_s: float = COMMISSIONED_S
) -> dict[str, float]:
    """Every modelled quantity at `t_s`, by the register name it is read as (canonical units).

    Energy counters count from `energy_since_s` (see `counting_since`).
    """
    out: dict[str, float] = {}
    total = dict.fromkeys(_TOTAL_KEYS, 0.0)
    neutral = 0j
    volts: list[float] = []
    for index, phase in enumerate(meter.phases):
        values, sums, current = _phase_quantities(phase, index, t_s, energy_since_s)
        name = PHASE_NAMES[index]
        out.update((f"{key}{name}", value) for key, value in values.items())
        for key, value in sums.items():
            total[key] += value
        neutral += current
        volts.append(values["voltage"])
    n = len(meter.phases)
    _power_totals(out, total, n, t_s, volts, neutral)
    _energy_totals(out, total)
    if n == 3:
        _line_quantities(out)
    return out


def _phase_quantities(
    phase: Phase, index: int, t_s: float, since: float
) -> tuple[dict[str, float], dict[str, float], complex]:
    """One phase at `t_s`: its values by register name stem, what it adds to the totals, and
    its current as a phasor (for the neutral current)."""
    v = phase.voltage.at(t_s)
    p = phase.power.at(t_s)
    pf = phase.power_factor
    s = abs(p) / pf
    q = abs(p) * phase.reactive_ratio
    i = s / v
    signed_pf = pf if p >= 0 else -pf
    angle = _angle_deg(complex(p, q))
    v_angle = _VOLTAGE_ANGLE_DEG[index]
    i_angle = (v_angle - angle + 180.0) % 360.0 - 180.0
    values = {
        **dict(voltage=v, current=i, activePower=p, reactivePower=q, apparentPower=s),
        **dict(powerFactor=signed_pf, cosPhi=signed_pf, phaseAngle=angle),
        **dict(voltagePhaseAngle=v_angle, currentPhaseAngle=i_angle, quadrant=_quadrant(p, q)),
    }
    sums = dict(p=p, q=q, s=s, i=i)
    _phase_energy(phase, t_s, since, values, sums)
    return values, sums, cmath.rect(i, math.radians(i_angle))


def _phase_energy(
    phase: Phase,
    t_s: float,
    since: float,
    values: dict[str, float],
    sums: dict[str, float],
) -> None:
    """Add one phase's counters, demands and distortion to `values` and `sums`."""
    wave, pf, v_mean = phase.power, phase.power_factor, phase.voltage.mean
    imp = wave.positive_integral(since, t_s) / J_PER_KWH
    exp = wave.negative_integral(since, t_s) / J_PER_KWH
    reset_since = max(since, RESETTABLE_FROM_S)
    imp_r = wave.positive_integral(reset_since, t_s) / J_PER_KWH
    exp_r = wave.negative_integral(reset_since, t_s) / J_PER_KWH
    rimp = (imp + exp) * phase.reactive_ratio
    aimp, aexp = imp / pf, exp / pf
    ah = (imp + exp) * 1000.0 / (pf * v_mean)
    demand_from = t_s - DEMAND_PERIOD_S
    d_imp = wave.positive_integral(demand_from, t_s) / DEMAND_PERIOD_S
    d_exp = wave.negative_integral(demand_from, t_s) / DEMAND_PERIOD_S
    d_current = (d_imp + d_exp) / (pf * v_mean)
    max_imp = max(wave.mean + wave.amplitude, 0.0)
    max_exp = max(wave.amplitude - wave.mean, 0.0)
    thd_v, thd_i = phase.thd_voltage.at(t_s), phase.thd_current.at(t_s)
    values.update(
        importActiveEnergy=imp,
        exportActiveEnergy=exp,
        netActiveEnergy=imp - exp,
        activeEnergy=imp - exp,
        totalActiveEnergy=imp + exp,
        **dict.fromkeys(_REACTIVE_IMPORT_NAMES, rimp),
        **dict.fromkeys(("exportReactiveEnergy", "capacitiveReactiveEnergy"), 0.0),
        importApparentEnergy=aimp,
        exportApparentEnergy=aexp,
        netApparentEnergy=aimp - aexp,
        apparentEnergy=aimp + aexp,
        currentDemand=d_current,
        maxCurrentDemand=max(max_imp, max_exp) / (pf * v_mean),
        thdVoltage=thd_v,
        thdCurrent=thd_i,
    )
    sums.update(imp=imp, exp=exp, imp_r=imp_r, exp_r=exp_r, rimp=rimp, aimp=aimp, aexp=aexp)
    sums.update(ah=ah, d_net=d_imp - d_exp, d_imp=d_imp, d_exp=d_exp, d_app=(d_imp + d_exp) / pf)
    sums.update(max_imp=max_imp, max_exp=max_exp, max_app=max(max_imp, max_exp) / pf)
    sums.update(thd_v=thd_v, thd_i=thd_i)


# the reactive counters that count the (inductive) import
_REACTIVE_IMPORT_NAMES = (
    "importReactiveEnergy",
    "netReactiveEnergy",
    "totalReactiveEnergy",
    "reactiveEnergy",
    "inductiveReactiveEnergy",
)


def _power_totals(
    out: dict[str, float],
    total: dict[str, float],
    n: int,
    t_s: float,
    volts: list[float],
    neutral: complex,
) -> None:
    """The meter's power, current and voltage totals from its phases."""
    p, q, s = total["p"], total["q"], total["s"]
    phases = [PHASE_NAMES[k] for k in range(n)]
    out["activePower"] = p
    out["reactivePower"] = q
    out["apparentPower"] = s
    out["importActivePower"] = sum(max(out[f"activePower{name}"], 0.0) for name in phases)
    out["exportActivePower"] = sum(max(-out[f"activePower{name}"], 0.0) for name in phases)
    out["totalPowerFactor"] = p / s if s else 1.0
    out["powerFactor"] = out["totalPowerFactor"]
    out["totalPhaseAngle"] = _angle_deg(complex(p, q))
    out["quadrant"] = _quadrant(p, q)
    out["frequency"] = frequency_hz(t_s)
    out["sumCurrent"] = total["i"]
    out["averageCurrent"] = total["i"] / n
    out["averageVoltageLN"] = sum(volts) / n
    out["neutralCurrent"] = abs(neutral) if n == 3 else total["i"]
    out["averageThdVoltageLN"] = total["thd_v"] / n
    out["averageThdCurrent"] = total["thd_i"] / n
    out["phaseSequence"] = 1.0  # Janitza: 1 = clockwise (right-handed) rotating field
    out["neutralCurrentDemand"] = out["neutralCurrent"]
    out["maxNeutralCurrentDemand"] = max(
        (out[f"maxCurrentDemand{name}"] for name in phases), default=0.0
    )


def _energy_totals(out: dict[str, float], total: dict[str, float]) -> None:
    """The meter's counters and demands: the sums of its phases'."""
    out["importActiveEnergy"] = total["imp"]
    out["exportActiveEnergy"] = total["exp"]
    out["netActiveEnergy"] = total["imp"] - total["exp"]
    out["activeEnergy"] = total["imp"] - total["exp"]
    out["totalActiveEnergy"] = total["imp"] + total["exp"]
    out["resettableImportActiveEnergy"] = total["imp_r"]
    out["resettableExportActiveEnergy"] = total["exp_r"]
    out["resettableTotalActiveEnergy"] = total["imp_r"] + total["exp_r"]
    out.update(dict.fromkeys(_REACTIVE_IMPORT_NAMES, total["rimp"]))
    out["exportReactiveEnergy"] = 0.0
    out["capacitiveReactiveEnergy"] = 0.0
    out["importApparentEnergy"] = total["aimp"]
    out["exportApparentEnergy"] = total["aexp"]
    out["netApparentEnergy"] = total["aimp"] - total["aexp"]
    out["apparentEnergy"] = total["aimp"] + total["aexp"]
    out["ampereHours"] = total["ah"]
    out["totalActivePowerDemand"] = total["d_net"]
    out["importActivePowerDemand"] = total["d_imp"]
    out["exportActivePowerDemand"] = total["d_exp"]
    out["totalApparentPowerDemand"] = total["d_app"]
    out["maxTotalActivePowerDemand"] = total["max_imp"]
    out["maxImportActivePowerDemand"] = total["max_imp"]
    out["maxExportActivePowerDemand"] = total["max_exp"]
    out["maxTotalApparentPowerDemand"] = total["max_app"]


def _line_quantities(out: dict[str, float]) -> None:
    """Line-to-line voltages and their distortion, for a three-phase meter."""
    lines = []
    for a, b in LINE_PAIRS:
        va, vb = out[f"voltage{a}"], out[f"voltage{b}"]
        # |Va - Vb| for phasors 120° apart: sqrt(Va² + Vb² + Va·Vb).
        vll = math.sqrt(va * va + vb * vb + va * vb)
        out[f"voltage{a}{b}"] = vll
        out[f"thdVoltage{a}{b}"] = (out[f"thdVoltage{a}"] + out[f"thdVoltage{b}"]) / 2
        lines.append(vll)
    out["averageVoltageLL"] = sum(lines) / 3
    out["averageThdVoltageLL"] = sum(out[f"thdVoltage{a}{b}"] for a, b in LINE_PAIRS) / 3


# A PV array's daylight: DC power follows a half sine from 06:00 to 18:00 UTC (zero at night),
# its peak drawn from the meter's seed; the inverter turns `INVERTER_EFFICIENCY` of it into AC.
DAY_S = 86_400.0
INVERTER_EFFICIENCY = 0.96
PV_NAMES = ("acPower", "acEnergy", "dcPower", "dcVoltage", "dcCurrent")
MPPT_NAMES = ("dcPower", "dcVoltage", "dcCurrent", "dcEnergy")
_unit("W", "acPower", "dcPower")
_unit("kWh", "acEnergy", "dcEnergy")
_unit("V", "dcVoltage")
_unit("A", "dcCurrent")


def daylight(seed: int) -> Wave:
    """The array's power over the day (its positive part): 0 at 06:00 and 18:00 UTC, its peak
    at noon."""
    peak_w = 4000.0 + 1000.0 * (seed % 7)
    return Wave(0.0, peak_w, DAY_S, -TWO_PI * 6 * 3600 / DAY_S)


def pv_quantities(
    seed: int, t_s: float, trackers: int = 0, energy_since_s: float = COMMISSIONED_S
) -> dict[str, float]:
    """An inverter's quantities at `t_s` (canonical units) from its array's daylight curve;
    with `trackers`, each MPP tracker's share too (`dcPower1`, `dcVoltage1`, ...)."""
    wave = daylight(seed)
    dc_w = max(0.0, wave.at(t_s))
    dc_kwh = wave.positive_integral(energy_since_s, t_s) / J_PER_KWH
    # the string voltage rises with the light; a dark array reads 0 V
    dc_v = 560.0 + 80.0 * dc_w / wave.amplitude if dc_w > 0 else 0.0
    out = {
        "acPower": dc_w * INVERTER_EFFICIENCY,
        "acEnergy": dc_kwh * INVERTER_EFFICIENCY,
        "dcPower": dc_w,
        "dcVoltage": dc_v,
        "dcCurrent": dc_w / dc_v if dc_v else 0.0,
    }
    for k in range(1, trackers + 1):
        share = dc_w / trackers
        out |= {
            f"dcPower{k}": share,
            f"dcVoltage{k}": dc_v,
            f"dcCurrent{k}": share / dc_v if dc_v else 0.0,
            f"dcEnergy{k}": dc_kwh / trackers,
        }
    return out


MAX_TRACKERS = 16
for _k in range(1, MAX_TRACKERS + 1):
    _unit("W", f"dcPower{_k}")
    _unit("V", f"dcVoltage{_k}")
    _unit("A", f"dcCurrent{_k}")
    _unit("kWh", f"dcEnergy{_k}")
