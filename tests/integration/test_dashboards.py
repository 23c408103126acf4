"""Every query of every shipped dashboard, run against InfluxDB 1.x holding a day and a half of
readings stored by the writer's own code (`writer.counters`, `writer.lines`) from the simulator's
model, and checked against what the model says the meters did.

The day: 12 March 2024 in Europe/Berlin, five-minute ticks from 21:00 the evening before to
01:00 the morning after (both midnights). Meter 101 (SDM630) restarts its counters at 11:02
local and gets one reading late and one twice; meter 102 (SDM630, a prosumer that exports)
misses two hours; meter 103 (SDM120, one phase) is offline for its last three ticks. Meter 101's
last reading holds an impossible voltage, which the writer's plausibility guard keeps out.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest

from devservices.readers import InfluxQL
from emm.messages import Meter, Reading, Status
from emm.plan import Plan
from emm.plausibility import Guard
from emm.schedule import CronSchedule
from simulator.faults import Window
from simulator.model import MeterSpec, expected, phase_count
from simulator.physics import J_PER_KWH, MeterPhysics
from tests import grafana
from writer.counters import CounterWatch, tick_counter
from writer.lines import delta_lines, reading_lines, suspect_lines
from writer.plausibility import PlausibilityGuard, without

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TZ = "Europe/Berlin"
BERLIN = ZoneInfo(TZ)
STEP_MS = 300_000
CRON = "*/5 * * * *"
START = datetime(2024, 3, 11, 21, 0, tzinfo=BERLIN)
END = datetime(2024, 3, 13, 1, 0, tzinfo=BERLIN)
DAY = datetime(2024, 3, 12, tzinfo=BERLIN)


def ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


DAY_MS = (ms(DAY), ms(DAY + timedelta(days=1)) - 1)  # the day as Grafana's "today" range
RESET_S = ms(datetime(2024, 3, 12, 11, 2, tzinfo=BERLIN)) / 1000
GAP = range(
    ms(datetime(2024, 3, 12, 14, 0, tzinfo=BERLIN)),
    ms(datetime(2024, 3, 12, 16, 0, tzinfo=BERLIN)),
    STEP_MS,
)
TICKS = list(range(ms(START), ms(END) + 1, STEP_MS))


@dataclass
class Fleet:
    """What was stored, per meter: its spec, the ticks read (up) and down, the values."""

    db: InfluxQL
    specs: dict[int, MeterSpec]
    up: dict[int, list[int]] = field(default_factory=dict)
    down: dict[int, list[int]] = field(default_factory=dict)
    values: dict[tuple[int, int], dict[str, float]] = field(default_factory=dict)
    latency: dict[tuple[int, int], float] = field(default_factory=dict)

    def energy(self, meter_id: int, start_ms: int, end_ms: int, sign: int = 1) -> float:
        """kWh the meter counted over the readings in [start_ms, end_ms]: the integral of its
        simulated power from its reading before that range to its last reading in it, less
        what passed while it restarted (its counters start again from zero at the restart)."""
        ticks = self.up[meter_id]
        before = [t for t in ticks if t < start_ms]
        inside = [t for t in ticks if start_ms <= t <= end_ms]
        if not inside:
            return 0.0
        a = before[-1] if before else inside[0]
        b = inside[-1]
        spec = self.specs[meter_id]
        assert spec.profile is not None
        phases = MeterPhysics.from_seed(spec.seed, phase_count(spec.profile.registers)).phases

        def integral(t0_ms: float, t1_ms: float) -> float:
            if sign > 0:
                return sum(p.power.positive_integral(t0_ms / 1000, t1_ms / 1000) for p in phases)
            return sum(p.power.negative_integral(t0_ms / 1000, t1_ms / 1000) for p in phases)

        total = integral(a, b)
        for window in spec.energy_resets:
            reset_ms = (window.last_end(b / 1000) or 0) * 1000
            if a < reset_ms <= b:
                last_before = max(t for t in ticks if t < reset_ms)
                total -= integral(last_before, reset_ms)
        return total / J_PER_KWH


def _status(latency_ms: float, up: bool = True) -> Status:
    if up:
        return Status(True, latency_ms=latency_ms, requests=3)
    return Status(False, "timeout", "no answer", latency_ms=latency_ms, requests=1)


@pytest.fixture(scope="module")
def fleet(influx_v1_server: str) -> Iterator[Fleet]:
    db = InfluxQL(influx_v1_server, f"emm_dash_{uuid.uuid4().hex[:12]}")
    db.create_database()
    specs = {
        101: replace(MeterSpec.of_type("sdm630", seed=1), energy_resets=(Window(RESET_S, 120.0),)),
        102: MeterSpec.of_type("sdm630", seed=3),
        103: MeterSpec.of_type("sdm120", seed=2),
    }
    fleet = Fleet(db, specs)
    watch = CounterWatch(tick_counter(CronSchedule(CRON).next_after))
    guard = PlausibilityGuard(watch)
    lines: list[str] = []

    def deliver(reading: Reading) -> None:
        suspect = list(guard.check(reading))
        stored = without(reading, dict.fromkeys(suspect, ""))
        seen = watch.observe(stored)
        lines.extend(reading_lines(stored, seen.resets, suspect))
        lines.extend(delta_lines(reading.meter, seen.deltas) + suspect_lines(reading, suspect))

    for meter_id, spec in specs.items():
        assert spec.profile is not None
        meter = Meter(meter_id, "127.0.0.1", 502, 1, spec.type, f"dashboard test {meter_id}")
        counters = Plan.build(spec.profile.registers).counters
        fleet.up[meter_id], fleet.down[meter_id] = [], []
        readings = []
        for k, tick in enumerate(TICKS):
            latency = 20.0 + (k * 7 + meter_id) % 13
            fleet.latency[(meter_id, tick)] = latency
            offline = (meter_id == 102 and tick in GAP) or (meter_id == 103 and k >= len(TICKS) - 3)
            if offline:
                fleet.down[meter_id].append(tick)
                readings.append(Reading(meter, tick, {}, _status(latency, up=False)))
                continue
            values = expected(spec, tick)
            fleet.values[(meter_id, tick)] = values
            fleet.up[meter_id].append(tick)
            readings.append(Reading(meter, tick, values, _status(latency), counters=counters))
        if meter_id == 101:  # one reading late (after the next), one delivered twice
            readings[40], readings[41] = readings[41], readings[40]
            readings.insert(200, readings[180])
            # the last one checked by the plausibility guard, with an impossible voltage
            last = readings[-1]
            limits = Guard(spec.profile.plausibility, Plan.build(spec.profile.registers).roles)
            readings[-1] = msgspec.structs.replace(
                last, fields={**last.fields, "voltageL1": 500.0}, guard=limits
            )
        for reading in readings:
            deliver(reading)
    for start in range(0, len(lines), 5000):
        db.write("\n".join(lines[start : start + 5000]))
    yield fleet
    db.drop_database()


class Runner:
    """Runs a dashboard's queries with Grafana's macros expanded; knows which it ran."""

    def __init__(self, fleet: Fleet, name: str) -> None:
        self.fleet = fleet
        self.name = name
        self.queries = {q.where: q for q in grafana.queries(grafana.DASHBOARDS / f"{name}.json")}
        self.ran: set[str] = set()

    def run(
        self,
        where: str,
        variables: dict[str, str | list[str]] | None = None,
        span: tuple[int, int] = DAY_MS,
    ) -> list[dict[str, Any]]:
        """The rows (with their series' tags) of one query."""
        text = grafana.expand(
            self.queries[where].text, from_ms=span[0], to_ms=span[1], variables=variables
        )
        self.ran.add(where)
        return rows_with_tags(self.fleet.db, text)

    def by_title(self, title: str) -> dict[str, Any]:
        data = grafana.load(self.name)
        return next(p for p in data["panels"] if p["title"] == title)

    def where(self, title: str, ref: str = "A") -> str:
        return f"panel {self.by_title(title)['id']} target {ref}"

    def all_ran(self) -> None:
        assert set(self.queries) - self.ran == set(), "queries no test ran"


def rows_with_tags(db: InfluxQL, q: str) -> list[dict[str, Any]]:
    """Like `InfluxQL.query`, each row also carrying its series' tags and name."""
    params = urllib.parse.urlencode({"db": db.database, "q": q, "epoch": "ms"})
    try:
        with urllib.request.urlopen(f"{db.url}/query?{params}", timeout=30) as resp:
            answer = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"{q}: HTTP {exc.code} {exc.read().decode()}") from None
    rows = []
    for result in answer["results"]:
        assert "error" not in result, f"{q}: {result['error']}"
        for series in result.get("series", []):
            for values in series["values"]:
                row = dict(zip(series["columns"], values, strict=True))
                row.update(series.get("tags") or {})
                rows.append(row)
    return rows


ALL = ["101", "102", "103"]


def test_every_dashboard_file_is_run_here() -> None:
    assert [p.stem for p in grafana.dashboard_files()] == ["fleet", "meter", "system"]


def test_fleet(fleet: Fleet) -> None:
    run = Runner(fleet, "fleet")
    assert sorted(r["value"] for r in run.run("variable meter")) == ALL
    table = run.where("Meters today")
    # the state now: ranges that end after the last tick
    late = (ms(START), ms(END) + 60_000)
    state = {r["meter_id"]: r for r in run.run(table, {"meter": ALL}, late)}
    assert {
        m: (r["up"], r["error"], r["suspect"], r["suspect_fields"]) for m, r in state.items()
    } == {
        "101": (True, "", 1, "voltageL1"),  # suspect: a value was kept out
        "102": (True, "", None, None),  # not checked (as a reading of an older worker)
        "103": (False, "timeout", None, None),
    }
    assert state["103"]["time"] == TICKS[-1]
    power = {r["meter_id"]: r for r in run.run(table.replace(" A", " B"), {"meter": ALL}, late)}
    for meter_id in (101, 102, 103):
        last = fleet.up[meter_id][-1]
        assert power[str(meter_id)]["power"] == fleet.values[(meter_id, last)]["activePower"]
        assert power[str(meter_id)]["time"] == last
    # energy and completeness today, for a multi-value selection of two meters
    today = {
        r["meter_id"]: r for r in run.run(table.replace(" A", " C"), {"meter": ["101", "102"]})
    }
    assert set(today) == {"101", "102"}
    for meter_id in (101, 102):
        row = today[str(meter_id)]
        assert row["import"] == pytest.approx(fleet.energy(meter_id, *DAY_MS), abs=0.05)
        assert row["export"] == pytest.approx(fleet.energy(meter_id, *DAY_MS, -1), abs=0.05)
        stored = len([t for t in fleet.up[meter_id] if DAY_MS[0] <= t <= DAY_MS[1]])
        expected_ticks = len([t for t in TICKS if DAY_MS[0] <= t <= DAY_MS[1]])
        assert row["completeness"] == pytest.approx(100 * stored / expected_ticks)
    assert today["101"]["completeness"] == 100
    assert today["102"]["completeness"] < 100
    assert today["102"]["export"] > 1  # the prosumer exports
    series = run.run(run.where("Active power"), {"meter": ALL})
    assert {r["meter_id"] for r in series} == set(ALL)
    run.all_ran()


def test_meter(fleet: Fleet) -> None:
    run = Runner(fleet, "meter")
    assert sorted(r["value"] for r in run.run("variable meter")) == ALL
    one = {"meter": "101", "tz": TZ}
    hour = (ms(DAY + timedelta(hours=10)), ms(DAY + timedelta(hours=11)) - 1)
    for title, base in (
        ("Voltage per phase", "voltage"),
        ("Current per phase", "current"),
        ("Active power per phase", "activePower"),
        ("Power factor per phase", "powerFactor"),
    ):
        rows = run.run(run.where(title), one, hour)  # 10 s buckets: one reading in each
        stored = [r for r in rows if r["L1"] is not None]
        assert len(stored) == 12
        for row in stored:
            values = fleet.values[(101, row["time"])]
            assert {p: row[p] for p in ("L1", "L2", "L3")} == {
                p: pytest.approx(values[f"{base}{p}"]) for p in ("L1", "L2", "L3")
            }, title
    for title, name in (("Total active power", "total"), ("Frequency", "frequency")):
        rows = [r for r in run.run(run.where(title), one, hour) if r[name] is not None]
        source = "activePower" if name == "total" else "frequency"
        assert [r[name] for r in rows] == [
            pytest.approx(fleet.values[(101, r["time"])][source]) for r in rows
        ]
    _energy_bars(run, fleet)
    resets = run.run("annotation Counter resets", one, (ms(START), ms(END)))
    after_reset = min(t for t in fleet.up[101] if t / 1000 > RESET_S)
    assert [r["time"] for r in resets] == [after_reset]
    assert "importActiveEnergy" in resets[0]["counter_reset_fields"].split(",")
    suspects = run.run("annotation Suspect readings", one, (ms(START), ms(END)))
    assert [(r["time"], r["suspect_fields"]) for r in suspects] == [
        (max(fleet.up[101]), "voltageL1")
    ]
    latency = run.run(run.where("Read latency"), one, hour)
    assert [r["mean"] for r in latency if r["mean"] is not None] == [
        fleet.latency[(101, r["time"])] for r in latency if r["mean"] is not None
    ]
    failed = run.run(run.where("Failed reads and register errors"), {**one, "meter": "102"})
    assert sum(r["failed reads"] for r in failed) == len(GAP)
    errors = run.run(run.where("Failed reads and register errors", "B"), one)
    assert sum(r["register errors"] for r in errors) == 0
    run.all_ran()


def _energy_bars(run: Runner, fleet: Fleet) -> None:
    """Energy per hour, day and month in the time zone: the model's, across both midnights,
    the counter restart and the gap."""
    whole = (ms(START), ms(END))
    for meter_id in ("101", "102"):
        variables: dict[str, str | list[str]] = {"meter": meter_id, "tz": TZ}
        days = run.run(run.where("Energy per day"), variables, whole)
        local_days = [datetime.fromtimestamp(r["time"] / 1000, BERLIN) for r in days]
        assert [(d.day, d.hour) for d in local_days] == [(11, 0), (12, 0), (13, 0)]
        for row, start in zip(days, local_days, strict=True):
            end = ms(start + timedelta(days=1)) - 1
            for column, sign in (("import", 1), ("export", -1)):
                assert row[column] == pytest.approx(
                    fleet.energy(int(meter_id), ms(start), end, sign), abs=0.05
                ), (meter_id, start, column)
        hours = run.run(run.where("Energy per hour"), variables, whole)
        assert len(hours) == 29  # 21:00 to 01:00 the day after next
        for row in days:
            in_day = [h for h in hours if row["time"] <= h["time"] < row["time"] + 86_400_000]
            assert sum(h["import"] for h in in_day) == pytest.approx(row["import"], abs=1e-6)
        month_panel = run.by_title("Energy per month")
        months = run.run(run.where("Energy per month"), variables, whole)
        assert [t["id"] for t in month_panel["transformations"]] == ["formatTime", "groupBy"]
        assert sum(r["import"] for r in months) == pytest.approx(
            fleet.energy(int(meter_id), *whole), abs=0.05
        )


def test_system(fleet: Fleet) -> None:
    run = Runner(fleet, "system")
    whole = (ms(START), ms(END) + 60_000)
    [offline] = run.run(run.where("Meters offline now"), span=whole)
    assert offline["count"] == 1
    [read] = run.run(run.where("Meters read"), span=whole)
    assert read["count"] == 3
    failed = run.run(run.where("Failed reads"), span=whole)
    assert sum(r["failed"] for r in failed) == len(GAP) + 3
    errors = run.run(run.where("Errors by code"), span=whole)
    assert {r["error_code"] for r in errors} == {"timeout"}
    assert sorted({r["meter"] for r in errors}) == ["102", "103"]
    latency = run.run(run.where("Read latency (fleet)"), span=whole)
    assert max(r["max"] for r in latency if r["max"] is not None) == max(fleet.latency.values())
    stored = run.run(run.where("Readings stored"), span=whole)
    assert sum(r["readings"] for r in stored) == 3 * len(TICKS)
    run.all_ran()


@pytest.mark.parametrize("path", grafana.dashboard_files(), ids=lambda p: p.stem)
def test_tags_are_selected_as_tags(path: Any) -> None:
    for query in grafana.queries(path):
        text = query.text
        if "WHERE" in text and "meter_id" in text.split("WHERE", 1)[1].split("GROUP BY")[0]:
            assert '"meter_id"::tag' in text, query.where


def emm_report(fleet: Fleet, *args: str) -> str:
    """The real `emm report` command against the fleet's database."""
    env = {
        **os.environ,
        "EMM_INFLUX_URL": fleet.db.url,
        "EMM_INFLUX_API": "v1",
        "EMM_INFLUX_BUCKET": fleet.db.database,
    }
    done = subprocess.run(
        [sys.executable, "-m", "cli", "report", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_report_energy_is_the_dashboards(fleet: Fleet) -> None:
    daily = emm_report(
        fleet,
        "energy",
        "--meter",
        "101",
        "--from",
        "2024-03-11",
        "--to",
        "2024-03-14",
        "--every",
        "day",
        "--tz",
        TZ,
        "--csv",
    )
    rows = list(csv.DictReader(daily.splitlines()))
    assert [r["period"] for r in rows] == ["2024-03-11", "2024-03-12", "2024-03-13"]
    run = Runner(fleet, "meter")
    days = run.run(run.where("Energy per day"), {"meter": "101", "tz": TZ}, (ms(START), ms(END)))
    assert [float(r["importActiveEnergy"]) for r in rows] == [d["import"] for d in days]
    assert [float(r["exportActiveEnergy"]) for r in rows] == [d["export"] for d in days]
    assert float(rows[1]["importActiveEnergy"]) == pytest.approx(
        fleet.energy(101, *DAY_MS), abs=0.05
    )
    monthly = emm_report(
        fleet,
        "energy",
        "--meter",
        "102",
        "--from",
        "2024-03-01",
        "--to",
        "2024-04-01",
        "--every",
        "month",
        "--tz",
        TZ,
    )
    lines = monthly.splitlines()
    assert lines[1].split()[0] == "period"
    [march] = lines[2:]
    columns = dict(zip(lines[1].split(), march.split(), strict=True))
    assert float(columns["importActiveEnergy"]) == pytest.approx(
        fleet.energy(102, ms(START), ms(END)), abs=0.05
    )
    assert columns["missed_ticks"] == str(len(GAP))
