"""Devices that die, sleep or reboot: offline with backoff, back at the first answer, status on
every tick, counter restarts flagged, and no effect on the healthy meters' read latency."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import psycopg2
import pytest

from devservices.influx import PrivateInfluxDB
from devservices.processes import Processes
from devservices.rabbitmq import PrivateRabbitMQ
from tests.faults.harness import Pipeline, check, now_ms, tick_floor

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

SCENARIO = """
[[faults]]
kind = "latency"
fixed_ms = 20

[[faults]]
kind = "timeout"        # meter 0 does not answer for the first 40 s, then answers again
meters = [0]
for_s = 40

[[faults]]
kind = "reboot"         # meter 1 reboots at 16 s for 4 s and restarts its counters
meters = [1]
after_s = 16
for_s = 4
reset_energy = true
"""


def ids_by_index(dsn: str) -> dict[int, int]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, description FROM energy_meters WHERE description LIKE 'sim-%'")
        rows = cur.fetchall()
    conn.close()
    return {int(d.removeprefix("sim-")): i for i, d in rows}


def test_offline_backoff_comeback_status_and_counter_restart(
    pg_dsn: str,
    rabbit: PrivateRabbitMQ,
    influx: PrivateInfluxDB,
    processes: Processes,
    tmp_path: Path,
) -> None:
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(SCENARIO)
    pipeline = Pipeline(
        processes,
        pg_dsn,
        rabbit.url,
        influx.url,
        meters=4,
        period_s=2,
        workers=1,
        simulator_args=["--port-per-meter", "--scenario", str(scenario)],
        extra_env={
            "EMM_OFFLINE_AFTER_TICKS": "3",
            "EMM_OFFLINE_BACKOFF_MAX_S": "8",
            "EMM_READ_TIMEOUT_S": "0.5",
            "EMM_READ_ATTEMPTS": "2",
        },
    )
    sim_started = now_ms()
    first = pipeline.run()
    p_ms = pipeline.period_ms
    last = tick_floor(sim_started + 56_000, pipeline.period_s)
    time.sleep(max(0.0, (last + 3000 - now_ms()) / 1000))
    ids = ids_by_index(pg_dsn)

    # Every tick has a meter_status point for every meter.
    counts = influx.query(
        f"SELECT count(latency_ms) FROM meter_status WHERE time >= {first}ms AND "
        f"time <= {last}ms GROUP BY time({p_ms}ms) fill(0)"
    )
    assert {r["count"] for r in counts} == {4}

    # Meter 0: three failed ticks, then polled with backoff 2, 4, 8, 8 ... ticks apart, each
    # skipped tick says "offline"; from its first answer on it is read every tick.
    rows = influx.query(
        f"SELECT up, error_code, requests FROM meter_status WHERE meter_id = '{ids[0]}' "
        f"AND time >= {first}ms AND time <= {last}ms"
    )
    came_back = next(i for i, r in enumerate(rows) if r["up"])
    answering_from = sim_started + 40_000
    assert rows[came_back]["time"] > answering_from
    assert all(r["up"] for r in rows[came_back:])
    assert all(not r["up"] for r in rows[:came_back])
    polled = [i for i, r in enumerate(rows[: came_back + 1]) if r["requests"] > 0]
    gaps = [b - a for a, b in itertools.pairwise(polled)]
    assert gaps[:2] == [1, 1]
    assert all(g >= 2 for g in gaps[2:]), gaps
    assert max(gaps) <= 4  # the 8 s cap is 4 ticks
    assert sorted({g for g in gaps[2:]}) == [2, 4] or gaps[2:] == [2]
    skipped = [r for i, r in enumerate(rows[:came_back]) if i not in polled]
    assert skipped and {r["error_code"] for r in skipped} == {"offline"}
    assert {rows[i]["error_code"] for i in polled[:-1]} == {"timeout"}
    # ... and it was reported going offline once, and coming back once.
    worker_log = pipeline.log("worker0")
    assert worker_log.count(f"meter {ids[0]} ") >= 2
    assert worker_log.count("offline after 3 failed ticks") == 1
    assert worker_log.count("answers again after") == 1

    # Meter 1 rebooted and restarted its energy counters: flagged once, no negative step hidden.
    flagged = influx.query(
        f"SELECT counter_resets, counter_reset_fields FROM meter_status "
        f"WHERE meter_id = '{ids[1]}' AND counter_resets > 0"
    )
    assert len(flagged) == 1, flagged
    assert sim_started + 20_000 <= flagged[0]["time"] <= sim_started + 26_000
    assert "importActiveEnergy" in flagged[0]["counter_reset_fields"].split(",")
    energy = influx.query(
        f"SELECT importActiveEnergy FROM energy WHERE meter_id = '{ids[1]}' ORDER BY time"
    )
    values = [r["importActiveEnergy"] for r in energy]
    drops = [i for i in range(1, len(values)) if values[i] < values[i - 1]]
    assert [energy[i]["time"] for i in drops] == [flagged[0]["time"]]

    # The healthy meters were read exactly, every tick.
    verdict = check(pipeline, influx, first, last, only={ids[2], ids[3]})
    assert verdict.lost == [] and verdict.dup == [], str(verdict)


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def test_a_dead_meter_does_not_slow_the_healthy_ones(
    pg_dsn: str,
    rabbit: PrivateRabbitMQ,
    influx: PrivateInfluxDB,
    processes: Processes,
    tmp_path: Path,
) -> None:
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(
        '[[faults]]\nkind = "latency"\nfixed_ms = 50\n\n'
        '[[faults]]\nkind = "timeout"\nmeters = [30]\n'
    )
    pipeline = Pipeline(
        processes,
        pg_dsn,
        rabbit.url,
        influx.url,
        meters=31,
        period_s=2,
        workers=1,
        simulator_args=["--port-per-meter", "--scenario", str(scenario)],
        extra_env={"EMM_READ_TIMEOUT_S": "0.6", "EMM_OFFLINE_AFTER_TICKS": "1000"},
    )
    pipeline.start_simulator()
    ids = ids_by_index(pg_dsn)
    dead = ids[30]

    def enable(on: bool) -> None:
        with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
            cur.execute("UPDATE energy_meters SET enabled = %s WHERE id = %s", (on, dead))
        conn.close()

    enable(False)
    first = pipeline.start_services()
    p_ms = pipeline.period_ms
    # The dead meter is in and out every two ticks, so both samples see the same machine.
    phases = 14
    for phase in range(phases):
        change_at = first + (phase + 1) * 2 * p_ms - 700
        time.sleep(max(0.0, (change_at - now_ms()) / 1000))
        enable(phase % 2 == 0)
    end = first + (phases + 1) * 2 * p_ms
    time.sleep(max(0.0, (end + 2500 - now_ms()) / 1000))

    rows = influx.query(
        f"SELECT latency_ms, meter_id, error_code FROM meter_status WHERE time >= {first}ms "
        f"AND time < {end}ms"
    )
    dead_ticks = {r["time"] for r in rows if r["meter_id"] == str(dead)}
    assert {r["error_code"] for r in rows if r["meter_id"] == str(dead)} == {"timeout"}
    healthy = [r for r in rows if r["meter_id"] != str(dead)]
    beside_dead = [r["latency_ms"] for r in healthy if r["time"] in dead_ticks]
    alone = [r["latency_ms"] for r in healthy if r["time"] not in dead_ticks]
    assert len(alone) >= 30 * (phases - 1) and len(beside_dead) >= 30 * (phases - 2)
    assert p99(beside_dead) <= 1.10 * p99(alone), (p99(alone), p99(beside_dead))
