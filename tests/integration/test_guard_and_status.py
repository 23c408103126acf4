"""The plausibility guard through the whole pipeline (simulator -> scheduler -> worker -> writer
-> InfluxDB 1.x), and `emm status` on what it stored.

Five SDM630s, read every 2 s: meter 0 is fine, meter 1's import and total energy spike by
9,113 kWh for one tick, meter 2's import energy reads 0 for one tick, meter 3 is served with the
wrong word order, meter 4 never answers. Meter 1 has its own maximum power (an `energy_meters`
override of migration 5); the others have the SDM630 profile's.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from broker import READINGS
from devservices import postgres, rabbitmq
from devservices.net import free_port_run
from devservices.processes import Processes
from devservices.rabbitmq import PrivateRabbitMQ
from devservices.readers import InfluxQL
from emm.plan import Plan
from emm.plausibility import Guard
from emm.profiles import shipped_profile
from simulator.faults import Distortion, Window
from simulator.model import MeterSpec, expected
from tests.faults.harness import Pipeline, now_ms
from tests.helpers import unavailable
from tests.integration.amqp_util import publish
from writer.counters import increment
from writer.plausibility import value_problems

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PERIOD_S = 2
FAULT_AFTER_S = 20
RUN_S = 32  # after the simulator started
SPIKED = ["importActiveEnergy", "totalActiveEnergy"]
METER_MAX_POWER_W = 50_000.0
SCENARIO = f"""
[[faults]]
kind = "spike"
meters = [1]
registers = {json.dumps(SPIKED)}
after_s = {FAULT_AFTER_S}
for_s = {PERIOD_S}

[[faults]]
kind = "zero"
meters = [2]
registers = ["importActiveEnergy"]
after_s = {FAULT_AFTER_S}
for_s = {PERIOD_S}

[[faults]]
kind = "word_order"
meters = [3]

[[faults]]
kind = "timeout"
meters = [4]
"""


@dataclass
class Run:
    pipeline: Pipeline
    db: InfluxQL
    ids: dict[int, int]  # simulator index -> meter id
    started_ms: int  # about when the simulator started

    def spec(self, index: int) -> MeterSpec:
        return self.pipeline.specs[self.ids[index]]

    def status(self, meter_index: int) -> list[dict[str, Any]]:
        return self.db.query(
            f"SELECT * FROM meter_status WHERE meter_id = '{self.ids[meter_index]}'"
        )

    def emm(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli", *args],
            env={**os.environ, **self.pipeline.env, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture(scope="module")
def run(
    postgres_server: str,
    amqp_server: str,
    influx_v1_server: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Run]:
    folder = tmp_path_factory.mktemp("guard")
    scenario = folder / "scenario.toml"
    scenario.write_text(SCENARIO)
    db = InfluxQL(influx_v1_server, f"emm_guard_{uuid.uuid4().hex[:12]}")
    db.create_database()
    rabbitmq.delete_queues(amqp_server, ("emm.jobs", "emm.readings"))
    procs = Processes(folder)
    with postgres.fresh_database(postgres_server) as dsn:
        pipeline = Pipeline(
            procs,
            dsn,
            amqp_server,
            influx_v1_server,
            meters=5,
            period_s=PERIOD_S,
            workers=1,
            simulator_args=["--port-per-meter", "--scenario", str(scenario)],
            extra_env={
                "EMM_INFLUX_BUCKET": db.database,
                "EMM_READ_TIMEOUT_S": "0.3",
                "EMM_READ_ATTEMPTS": "1",
                "EMM_OFFLINE_AFTER_TICKS": "1",
                "EMM_OFFLINE_BACKOFF_MAX_S": "2",
            },
        )
        try:
            started = now_ms()
            pipeline.start_simulator()
            ids = _ids(dsn)
            with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
                cur.execute(
                    "UPDATE energy_meters SET max_power_w = %s WHERE id = %s",
                    (METER_MAX_POWER_W, ids[1]),
                )
            conn.close()
            pipeline.start_services()
            time.sleep(max(0.0, (started + RUN_S * 1000 - now_ms()) / 1000))
            yield Run(pipeline, db, ids, started)
        finally:
            procs.stop_all()
            db.drop_database()


def _ids(dsn: str) -> dict[int, int]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, description FROM energy_meters WHERE description LIKE 'sim-%'")
        rows = cur.fetchall()
    conn.close()
    return {int(d.removeprefix("sim-")): i for i, d in rows}


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds")


def _the_faulty_tick(run: Run, index: int, fields: str, count: int) -> tuple[int, int, int]:
    """The one tick the meter's reading was flagged at (with exactly these fields), and the
    ticks of its clean readings just before and after it."""
    rows = run.status(index)
    flagged = [r for r in rows if r.get("suspect")]
    assert [(r["suspect"], r["suspect_fields"]) for r in flagged] == [(count, fields)]
    clean = [r for r in rows if r["up"] and not r.get("suspect")]
    assert all(r["suspect"] == 0 for r in clean)
    tick = int(flagged[0]["time"])
    # the window of the fault, as the test saw the simulator start
    low, high = run.started_ms + (FAULT_AFTER_S - PERIOD_S) * 1000, run.started_ms + 30_000
    assert low <= tick <= high
    ticks = sorted(int(r["time"]) for r in clean)
    before = max(t for t in ticks if t < tick)
    after = min(t for t in ticks if t > tick)
    return before, tick, after


def _energy(run: Run, index: int) -> dict[int, dict[str, Any]]:
    rows = run.db.query(f"SELECT * FROM energy WHERE meter_id = '{run.ids[index]}'")
    return {int(r["time"]): r for r in rows}


def _deltas(run: Run, index: int, name: str) -> dict[int, float | None]:
    rows = run.db.query(f"SELECT \"{name}\" FROM energy_delta WHERE meter_id = '{run.ids[index]}'")
    return {int(r["time"]): r[name] for r in rows}


def _check_kept_out(
    run: Run, index: int, ticks: tuple[int, int, int], names: list[str], raw: dict
) -> None:
    """The values are not in `energy` at the tick, they are in `energy_suspect`, the other
    fields are the simulator's, and the deltas step over the tick."""
    before_ms, tick, after_ms = ticks
    energy = _energy(run, index)
    spec = run.spec(index)
    clean = expected(spec, tick)
    stored = {k: v for k, v in energy[tick].items() if v is not None and k in clean}
    assert stored == {k: v for k, v in clean.items() if k not in names}
    [suspect] = run.db.query(
        f"SELECT * FROM energy_suspect WHERE meter_id = '{run.ids[index]}' AND time = {tick}ms"
    )
    assert {n: suspect[n] for n in names} == {n: raw[n] for n in names}
    for name in names:
        deltas = _deltas(run, index, name)
        assert deltas.get(tick) is None
        before, after = expected(spec, before_ms)[name], expected(spec, after_ms)[name]
        assert deltas[after_ms] == increment(before, after)
        # energy per day is a sum: it matches the counter across the suspect tick
        first, last = min(deltas), max(deltas)
        total = sum(v for v in deltas.values() if v is not None)
        start = max(t for t in energy if t < first)
        assert total == pytest.approx(energy[last][name] - energy[start][name], abs=1e-6)


def test_a_spike_is_flagged_kept_out_and_logged_once(run: Run) -> None:
    ticks = _the_faulty_tick(run, 1, ",".join(SPIKED), 2)
    before_ms, tick, _ = ticks
    spec = run.spec(1)
    faulty = replace(
        spec,
        distortions=(Distortion("spike", frozenset(SPIKED), 9113.0, Window(tick / 1000, 2.0)),),
    )
    raw = expected(faulty, tick)
    _check_kept_out(run, 1, ticks, SPIKED, raw)
    before = expected(spec, before_ms)
    elapsed_ms = tick - before_ms
    allowed = METER_MAX_POWER_W * elapsed_ms / 3_600_000 * 2 + 100  # the meter's own
    why = "; ".join(
        f"{n} stepped {(raw[n] - before[n]) * 1000:.6g} Wh in {elapsed_ms / 1000:g} s "
        f"(at most {allowed:.6g} Wh)"
        for n in SPIKED
    )
    line = (
        f"meter {run.ids[1]}: implausible value(s) at tick {_iso(tick)} kept out of energy and "
        f"energy_delta, stored in energy_suspect: {why}"
    )
    log = run.pipeline.log("writer")
    assert line in log
    assert log.count(f"meter {run.ids[1]}: implausible") == 1


def test_a_transient_zero_is_flagged_and_kept_out(run: Run) -> None:
    ticks = _the_faulty_tick(run, 2, "importActiveEnergy", 1)
    before_ms, tick, _ = ticks
    before = expected(run.spec(2), before_ms)["importActiveEnergy"]
    _check_kept_out(run, 2, ticks, ["importActiveEnergy"], {"importActiveEnergy": 0.0})
    line = (
        f"meter {run.ids[2]}: implausible value(s) at tick {_iso(tick)} kept out of energy and "
        f"energy_delta, stored in energy_suspect: importActiveEnergy went down from {before:g} "
        "to 0 without a reboot"
    )
    assert line in run.pipeline.log("writer")


def test_the_wrong_word_order_is_flagged_on_every_reading_and_logged_once(run: Run) -> None:
    rows = [r for r in run.status(3) if r["up"]]
    assert len(rows) >= 5
    profile = shipped_profile("sdm630")
    assert profile is not None
    guard = Guard(profile.plausibility, Plan.build(profile.registers).roles)
    swapped = replace(run.spec(3), distortions=(Distortion("word_order"),))
    first = min(rows, key=lambda r: r["time"])
    # its first reading: no counter known before it, so exactly the impossible values
    values = expected(swapped, int(first["time"]))
    assert first["suspect_fields"] == ",".join(sorted(value_problems(values, guard)))
    # later readings: the counters jump about too; a voltage or frequency is stored clean only
    # where its swapped words happen to land inside its range (range checks cannot tell those),
    # and then as served (garbage that is NaN or infinite is left out by the worker)
    checked = ("voltageL1", "voltageL2", "voltageL3", "frequency")
    for tick, row in _energy(run, 3).items():
        served = expected(swapped, tick)
        flagged = value_problems(served, guard)
        stored = {name: row.get(name) for name in checked}
        assert stored == {
            name: None
            if name in flagged or not math.isfinite(served.get(name, math.nan))
            else served[name]
            for name in checked
        }, tick
    assert all(r["suspect"] >= 4 for r in rows)
    assert run.pipeline.log("writer").count(f"meter {run.ids[3]}: implausible") == 1


def test_the_fine_meter_is_stored_clean(run: Run) -> None:
    rows = run.status(0)
    assert rows and all(r["up"] and r["suspect"] == 0 for r in rows)
    assert "suspect_fields" not in rows[0] or all(r["suspect_fields"] is None for r in rows)
    energy = _energy(run, 0)
    for tick, row in energy.items():
        assert {
            k: v
            for k, v in row.items()
            if v is not None and k not in ("time", "meter_id", "type", "description")
        } == expected(run.spec(0), tick)
    assert run.db.query(f"SELECT * FROM energy_suspect WHERE meter_id = '{run.ids[0]}'") == []


HEADER = ["meter", "state", "last", "reading", "age_s", "latency_ms", "errors", "suspect"]


def test_status_json_table_and_exit_code(run: Run) -> None:
    closed = free_port_run(1)
    api = f"http://127.0.0.1:{closed}/api"
    got = run.emm("status", "--json", EMM_RABBITMQ_API_URL=api)
    assert got.returncode == 1, got.stderr
    status = json.loads(got.stdout)
    assert set(status) == {"since_s", "expected_ticks", "meters", "gateways", "queues", "down"}
    assert status["since_s"] == 3600
    meters = {m["meter_id"]: m for m in status["meters"]}
    ids = {i: str(run.ids[i]) for i in range(5)}
    assert {m["state"] for m in meters.values()} <= {"up", "suspect", "offline"}
    assert [meters[ids[i]]["state"] for i in range(5)] == ["up", "up", "up", "suspect", "offline"]
    assert status["down"] == [ids[4]]
    assert set(meters[ids[0]]) == {
        "meter_id",
        "state",
        "last_reading_ms",
        "age_s",
        "error_code",
        "latency_ms",
        "readings",
        "errors",
        "suspect",
        "completeness",
    }
    assert meters[ids[4]]["error_code"] == "timeout"
    assert meters[ids[4]]["readings"] == 0 and meters[ids[4]]["errors"] >= 5
    assert meters[ids[1]]["suspect"] == 1 and meters[ids[2]]["suspect"] == 1
    assert meters[ids[0]]["errors"] == 0 and meters[ids[0]]["suspect"] == 0
    assert meters[ids[3]]["suspect"] == meters[ids[3]]["readings"]
    assert [g["gateway"] for g in status["gateways"]] == sorted(
        f"127.0.0.1:{run.pipeline.sim_port + i}" for i in range(5)
    )
    assert status["queues"] == {
        "api_url": api,
        "reachable": False,
        "error": "not reachable: [Errno 111] Connection refused",
        "queues": [],
    }

    table = run.emm("status", EMM_RABBITMQ_API_URL=api)
    assert table.returncode == 1
    lines = table.stdout.splitlines()
    assert lines[0].startswith("meters (last 1h: ")
    assert lines[1].split() == [*HEADER, "complete"]
    rows = [line.split()[:2] for line in lines[2:7]]
    assert rows == [[ids[i], s] for i, s in enumerate(["up", "up", "up", "suspect", "offline"])]
    assert lines[-2:] == [f"queues ({api})", "not reachable: [Errno 111] Connection refused"]


def test_status_exits_0_when_nothing_is_down_and_3_without_influxdb(run: Run) -> None:
    run.pipeline.processes.stop("scheduler")
    time.sleep(1.5)  # the last tick's readings are written
    run.db.execute(f"DROP SERIES FROM meter_status WHERE meter_id = '{run.ids[4]}'")
    # on a cron of 30 s the readings of the last 2 s are not stale yet
    got = run.emm(
        "status",
        "--json",
        EMM_RABBITMQ_API_URL="http://127.0.0.1:1/api",
        EMM_READ_CRON="*/30 * * * * *",
    )
    assert got.returncode == 0, got.stdout
    assert json.loads(got.stdout)["down"] == []
    gone = run.emm("status", EMM_INFLUX_URL="http://127.0.0.1:1")
    assert gone.returncode == 3
    assert gone.stderr.startswith("emm status: InfluxDB v1 at http://127.0.0.1:1 unreachable")


def test_status_reads_queue_depths_from_the_management_api(run: Run, tmp_path: Path) -> None:
    reason = PrivateRabbitMQ.available()
    if reason:
        unavailable(reason)
    node = PrivateRabbitMQ(tmp_path / "rabbitmq", management=True)
    try:
        node.start(timeout_s=120)
        publish(node.url, READINGS, [b"{}", b"{}"])
        api = f"http://guest:guest@127.0.0.1:{node.management_port}/api"
        env = {"EMM_AMQP_URL": node.url, "EMM_RABBITMQ_API_URL": api}
        deadline = time.monotonic() + 30
        while True:  # the management API's statistics lag the queue by a few seconds
            got = run.emm("status", "--json", **env)
            queues = json.loads(got.stdout)["queues"]
            if any(q["messages"] for q in queues["queues"]) or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert queues == {
            "api_url": f"http://127.0.0.1:{node.management_port}/api",
            "reachable": True,
            "error": "",
            "queues": [
                {
                    "name": "emm.readings",
                    "messages": 2,
                    "messages_ready": 2,
                    "messages_unacknowledged": 0,
                    "consumers": 0,
                }
            ],
        }
        table = run.emm("status", **env).stdout.splitlines()
        at = table.index(f"queues (http://127.0.0.1:{node.management_port}/api)")
        assert [line.split() for line in table[at + 1 :]] == [
            ["queue", "messages", "ready", "unacked", "consumers"],
            ["emm.readings", "2", "2", "0", "0"],
        ]
    finally:
        if node.running():
            node.kill()
