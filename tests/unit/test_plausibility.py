"""The plausibility limits (`emm.plausibility`) and the writer's guard (`writer.plausibility`):
what is flagged, why, what the deltas then hold, and how often it is logged."""

from __future__ import annotations

import logging

import pytest

from emm.errors import ConfigError
from emm.messages import Job, Meter, Reading, Status
from emm.plan import Plan
from emm.plausibility import DEFAULT_PLAUSIBILITY, Guard, Plausibility, Roles
from emm.profiles import parse_profile, shipped_profile, shipped_profiles
from emm.registers import Register
from emm.schedule import CronSchedule
from simulator.model import MeterSpec, expected
from writer.counters import CounterWatch, tick_counter
from writer.lines import reading_lines, suspect_lines
from writer.plausibility import PlausibilityGuard, value_problems, without

pytestmark = pytest.mark.timeout(60)

SDM630 = shipped_profile("sdm630")
assert SDM630 is not None
PLAN = Plan.build(SDM630.registers, SDM630.limits)
GUARD = Guard(SDM630.plausibility, PLAN.roles)
METER = Meter(4, "127.0.0.1", 502, 1, "sdm630")
T0 = 1_764_662_400_000  # a whole minute
MINUTE = 60_000


def test_clean_simulated_readings_of_every_profile_pass() -> None:
    for profile in shipped_profiles():
        guard = Guard(profile.plausibility, Plan.build(profile.registers, profile.limits).roles)
        for seed in (0, 3):  # 3: a prosumer, its power changes sign
            spec = MeterSpec(seed=seed, profile=profile, step_s=60)
            for k in range(0, 24):
                values = expected(spec, T0 + k * 3_600_000)
                assert value_problems(values, guard) == {}, (profile.type, seed, k)


def test_roles_of_the_sdm630() -> None:
    roles = PLAN.roles
    assert roles.voltages == ("voltageL1", "voltageL2", "voltageL3", "averageVoltageLN")
    assert roles.line_voltages == ("voltageL1L2", "voltageL2L3", "voltageL3L1", "averageVoltageLL")
    assert roles.frequencies == ("frequency",)
    assert roles.phases[0] == ("activePowerL1", "voltageL1", "currentL1", "powerFactorL1")
    assert len(roles.phases) == 3
    assert roles.factor("importActiveEnergy") == 1000.0
    assert roles.factor("activePower") == 1.0
    assert SDM630.plausibility.max_power_w == 69_000


def phase(p: float = 2000.0, v: float = 230.0, i: float = 10.0, pf: float = 0.87) -> dict:
    return {"activePowerL1": p, "voltageL1": v, "currentL1": i, "powerFactorL1": pf}


@pytest.mark.parametrize(
    ("fields", "flagged"),
    [
        (phase(), {}),
        # a phase that is not connected reads 0 V, 0 A, 0 W
        (phase(0.0, 0.0, 0.0, 1.0), {}),
        (phase(v=500.0), {"voltageL1": "500 V outside 80..300 V"}),
        (phase(v=9.06e-24), {"voltageL1": "9.06e-24 V outside 80..300 V"}),
        ({"voltageL1L2": 600.0}, {"voltageL1L2": "600 V outside 138.6..519.6 V"}),
        ({"frequency": 35.0}, {"frequency": "35 Hz outside 40..70 Hz"}),
        (phase(pf=1.2), {"powerFactorL1": "1.2 outside -1..1"}),
        ({"activePower": -70_000.0}, {"activePower": "-70000 above the maximum power 69000 W"}),
        (
            phase(p=200.0),
            {
                "activePowerL1": "|P| 200 W is not V·I·|PF| 2001 W",
                "currentL1": "|P| 200 W is not V·I·|PF| 2001 W",
            },
        ),
        # within 10 % of V·I + 25 W: the values were not read at the same instant
        (phase(p=2001.0 + 0.1 * 2300 + 24), {}),
    ],
)
def test_value_problems(fields: dict[str, float], flagged: dict[str, str]) -> None:
    assert value_problems(fields, GUARD) == flagged


def reading(k: int, energy: float, *, guard: Guard | None = GUARD, tick_ms: int = 0) -> Reading:
    return Reading(
        METER,
        tick_ms or T0 + k * MINUTE,
        {"importActiveEnergy": energy, "voltageL1": 230.0},
        Status(True),
        counters=("importActiveEnergy",),
        guard=guard,
    )


class Writer:
    """The writer's ingest of counters, as `writer.app` does it."""

    def __init__(self) -> None:
        self.watch = CounterWatch(tick_counter(CronSchedule("* * * * *").next_after))
        self.clock = 0.0
        self.guard = PlausibilityGuard(self.watch, clock=lambda: self.clock)
        self.deltas: dict[int, float] = {}
        self.resets: dict[int, list[str]] = {}

    def take(self, r: Reading) -> dict[str, str]:
        suspect = self.guard.check(r)
        seen = self.watch.observe(without(r, suspect))
        for d in seen.deltas:
            self.deltas[d.tick_ms] = d.values["importActiveEnergy"]
        if seen.resets:
            self.resets[r.tick_ms] = seen.resets
        return suspect


def test_a_spike_is_flagged_and_left_out_of_the_deltas() -> None:
    w = Writer()
    assert w.take(reading(0, 1000.0)) == {}
    assert w.take(reading(1, 1000.5)) == {}
    # 69 kW for a minute is 1.15 kWh; twice that + 0.1 kWh is allowed, 9,113 kWh is not
    assert w.take(reading(2, 1000.5 + 9113)) == {
        "importActiveEnergy": "stepped 9.113e+06 Wh in 60 s (at most 2400 Wh)"
    }
    assert w.take(reading(3, 1001.5)) == {}
    assert w.deltas == {T0 + MINUTE: 0.5, T0 + 3 * MINUTE: 1.0}


def test_a_transient_zero_is_flagged_and_left_out_of_the_deltas() -> None:
    w = Writer()
    w.take(reading(0, 1000.0))
    assert w.take(reading(1, 0.0)) == {
        "importActiveEnergy": "went down from 1000 to 0 without a reboot"
    }
    # a zero that holds is no restart yet: a counter that restarted counts up again
    assert w.take(reading(2, 0.0)) == {
        "importActiveEnergy": "went down from 1000 to 0 without a reboot"
    }
    assert w.take(reading(3, 1000.75)) == {}
    assert w.deltas == {T0 + 3 * MINUTE: 0.75}
    assert w.resets == {}


def test_a_drop_after_a_reboot_is_a_restart() -> None:
    w = Writer()
    w.take(reading(0, 1000.0))
    # the meter did not answer at the tick between: it rebooted
    assert w.take(Reading(METER, T0 + MINUTE, {}, Status(False, "timeout"))) == {}
    assert w.take(reading(2, 0.25)) == {}
    assert w.deltas == {T0 + 2 * MINUTE: 0.25}
    assert w.resets == {T0 + 2 * MINUTE: ["importActiveEnergy"]}


def test_a_missed_tick_is_no_reboot() -> None:
    w = Writer()
    w.take(reading(0, 1000.0))
    # no reading at the tick between (a job dropped as late): a drop is still suspect
    assert w.take(reading(2, 0.0)) == {
        "importActiveEnergy": "went down from 1000 to 0 without a reboot"
    }


def test_a_drop_after_a_gap_is_a_restart_when_the_writer_just_started() -> None:
    w = Writer()
    w.watch.restore([(METER.id, T0, {"importActiveEnergy": 1000.0})])  # from InfluxDB
    assert w.take(reading(2, 0.25)) == {}
    assert w.resets == {T0 + 2 * MINUTE: ["importActiveEnergy"]}


def test_a_drop_that_holds_is_a_restart() -> None:
    w = Writer()
    w.take(reading(0, 1000.0))
    assert "importActiveEnergy" in w.take(reading(1, 0.25))
    assert w.take(reading(2, 0.5)) == {}
    assert w.deltas == {T0 + 2 * MINUTE: 0.5}  # counted since the restart
    assert w.resets == {T0 + 2 * MINUTE: ["importActiveEnergy"]}


def test_a_step_that_holds_is_the_new_level() -> None:
    w = Writer()
    w.take(reading(0, 1000.0))
    assert "importActiveEnergy" in w.take(reading(1, 50_000.0))
    assert w.take(reading(2, 50_000.5)) == {}


def test_a_reading_without_a_guard_is_not_checked() -> None:
    w = Writer()
    w.take(reading(0, 1000.0, guard=None))
    assert w.take(reading(1, 0.0, guard=None)) == {}
    assert w.resets == {T0 + MINUTE: ["importActiveEnergy"]}


def test_logged_once_per_meter_per_hour(caplog: pytest.LogCaptureFixture) -> None:
    w = Writer()
    w.take(reading(0, 1000.0))
    with caplog.at_level(logging.WARNING, logger="writer.plausibility"):
        for k in range(1, 4):
            w.take(reading(k, 0.0))
        w.clock = 3600.0
        w.take(reading(4, 0.0))
    assert [r.getMessage() for r in caplog.records] == [
        "meter 4: implausible value(s) at tick 2025-12-02T08:01:00+00:00 kept out of energy and "
        "energy_delta, stored in energy_suspect: importActiveEnergy went down from 1000 to 0 "
        "without a reboot",
        "meter 4: implausible value(s) at tick 2025-12-02T08:04:00+00:00 kept out of energy and "
        "energy_delta, stored in energy_suspect: importActiveEnergy went down from 1000 to 0 "
        "without a reboot (2 more suspect readings since the last warning)",
    ]


def test_lines_of_a_suspect_reading() -> None:
    r = reading(1, 9e9)
    suspect = ["importActiveEnergy"]
    lines = reading_lines(without(r, {"importActiveEnergy": "x"}), None, suspect)
    assert lines == [
        "energy,meter_id=4,type=sdm630 voltageL1=230.0 1764662460000",
        'meter_status,meter_id=4,type=sdm630 up=true,error_code="",latency_ms=0.0,requests=0i,'
        'values=1i,missing=0i,errors=0i,suspect=1i,suspect_fields="importActiveEnergy" '
        "1764662460000",
    ]
    assert suspect_lines(r, suspect) == [
        "energy_suspect,meter_id=4,type=sdm630 importActiveEnergy=9000000000.0 1764662460000"
    ]
    clean = reading_lines(reading(1, 1.0))[1]
    assert clean.endswith("errors=0i,suspect=0i 1764662460000")
    assert "suspect" not in reading_lines(reading(1, 1.0, guard=None))[1]


def test_limits_from_a_profile_a_row_and_an_override() -> None:
    text = (
        'type = "x"\n[plausibility]\nmax_power_w = 5000\nvoltage_min_v = 100\n'
        '[[registers]]\nname = "v"\naddress = 0\nfunction_code = 4\ndata_type = "float32"\n'
    )
    limits = parse_profile(text, "x.toml").plausibility
    assert (limits.max_power_w, limits.voltage_min_v, limits.voltage_max_v) == (5000, 100, 300)
    meter = Plausibility.from_mapping({"max_power_w": 7000, "voltage_min_v": None}, limits)
    assert (meter.max_power_w, meter.voltage_min_v) == (7000, 100)
    no_table = text.replace("[plausibility]\nmax_power_w = 5000\nvoltage_min_v = 100\n", "")
    assert parse_profile(no_table, "x.toml").plausibility == DEFAULT_PLAUSIBILITY


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ("max_power = 1", "x.toml: [plausibility]: unknown plausibility key(s) max_power"),
        ("frequency_min_hz = 30", "x.toml: [plausibility]: frequency range must lie within"),
        ("power_factor_max = 1.5", "x.toml: [plausibility]: power factor range must lie within"),
        ('max_power_w = "a lot"', "x.toml: [plausibility]: max_power_w 'a lot' is not a number"),
    ],
)
def test_bad_limits_are_refused(table: str, problem: str) -> None:
    text = f'type = "x"\n[plausibility]\n{table}\n[[registers]]\nname = "v"\naddress = 0\n'
    with pytest.raises(ConfigError) as caught:
        parse_profile(text + 'function_code = 4\ndata_type = "float32"\n', "x.toml")
    assert str(caught.value).startswith(problem)


def test_the_limits_and_the_guard_travel_with_job_and_reading() -> None:
    plan = Plan.build([Register("voltageL1", 0, 4, unit="V")])
    job = Job(METER, T0, T0 + MINUTE, plan)
    assert b"plausibility" not in job.encode()  # the defaults: the key is left out
    limits = Plausibility(max_power_w=1000.0)
    job = Job(METER, T0, T0 + MINUTE, plan, plausibility=limits)
    assert b'"plausibility":{"max_power_w":1000.0}' in job.encode()
    assert Job.decode(job.encode()).guard == Guard(limits, Roles(voltages=("voltageL1",)))
    r = reading(0, 1.0)
    assert Reading.decode(r.encode()) == r
    assert Reading.decode(reading(0, 1.0, guard=None).encode()).guard is None
