"""Poll classes and per-meter crons through the whole pipeline: simulator, scheduler, worker,
writer and InfluxDB 1.x, the configuration in PostgreSQL."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg2
import pytest

from devservices.net import free_port, port_open, wait_for
from devservices.processes import Processes
from devservices.readers import InfluxQL
from emm.plan import Plan
from emm.planner import daily_due, due_classes, tick_index
from emm.profiles import Profile, load_profile
from postgres.connection import connect
from postgres.profiles import import_profile
from postgres.schema import migrate

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

DEFAULT_MS, OWN_MS = 2_000, 3_000  # EMM_READ_CRON every 2 s; the second meter's own every 3 s
PROFILE = """\
type = "polled"
max_read_registers = 125

[[registers]]
name = "voltageL1"
address = 0
function_code = 4
data_type = "float32"
unit = "V"

[[registers]]
name = "importActiveEnergy"
address = 200
function_code = 4
data_type = "float32"
unit = "kWh"
poll_every = 3

[[registers]]
name = "serialNumber"
address = 400
function_code = 4
data_type = "uint32"
poll_every = 0
"""


def _configure(dsn: str, profile: Profile, port: int) -> None:
    """The profile and two meters behind one port (the simulator's units 1 and 2); the second
    meter reads on a cron of its own."""
    with connect(dsn) as conn:
        migrate(conn)
        import_profile(conn, profile, replace=True)
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO energy_meters (host, port, slave_address, type, read_cron) "
            "VALUES ('127.0.0.1', %s, 1, 'polled', NULL), "
            "('127.0.0.1', %s, 2, 'polled', '*/3 * * * * *')",
            (port, port),
        )
    conn.close()


def _expected(profile: Profile, meter_id: int, ticks: list[int], period_ms: int):
    """{tick: (field names, requests)} the plan of each tick gives the meter; the first tick
    is the first this scheduler read it."""
    classes = {r.poll_every for r in profile.registers}
    out = {}
    for n, tick in enumerate(ticks):
        daily = n == 0 or daily_due(meter_id, tick - period_ms, tick)
        due = due_classes(classes, meter_id, tick_index(tick, period_ms), daily)
        registers = [r for r in profile.registers if r.poll_every in due]
        plan = Plan.build(registers, profile.limits)
        out[tick] = ({r.name for r in registers}, len(plan.requests))
    return out


def _stored(db: InfluxQL, meter_id: int) -> dict[int, tuple[set[str], int]]:
    """{tick: (fields stored in `energy`, meter_status.requests)} of one meter."""
    where = f"WHERE meter_id = '{meter_id}'"
    fields: dict[int, set[str]] = {
        row["time"]: {k for k, v in row.items() if v is not None and k != "time"}
        for row in db.query(
            f"SELECT voltageL1, importActiveEnergy, serialNumber FROM energy {where}"
        )
    }
    requests = {
        row["time"]: row["requests"]
        for row in db.query(f"SELECT requests FROM meter_status {where}")
    }
    return {t: (fields.get(t, set()), requests.get(t, -1)) for t in sorted(requests)}


def test_slow_registers_every_nth_tick_and_a_meter_on_its_own_cron(
    tmp_path: Path, pg_dsn: str, amqp_url: str, influx_v1: InfluxQL, processes: Processes
) -> None:
    path = tmp_path / "polled.toml"
    path.write_text(PROFILE)
    profile = load_profile(path)
    sim_port = free_port()
    _configure(pg_dsn, profile, sim_port)
    env = {
        "EMM_POSTGRES_DSN": pg_dsn,
        "EMM_AMQP_URL": amqp_url,
        "EMM_INFLUX_API": "v1",
        "EMM_INFLUX_URL": influx_v1.url,
        "EMM_INFLUX_BUCKET": influx_v1.database,
        "EMM_READ_CRON": "*/2 * * * * *",
        "EMM_WRITER_FLUSH_INTERVAL_MS": "100",
    }
    processes.start(
        "simulator",
        ["simulator", "--profile", str(path), "--meters", "2", "--port", str(sim_port)],
        env,
    )
    wait_for(lambda: port_open("127.0.0.1", sim_port), 15)
    processes.start("writer", ["writer"], env)
    processes.start("worker", ["worker"], env)
    # the first tick reads the once-and-daily class: the worker must be there to take it
    processes.wait_log("worker", "worker started", 30)
    processes.start("scheduler", ["scheduler"], env)

    wait_for(lambda: len(_stored(influx_v1, 2)) >= 4, 40, 0.5)
    assert processes.stop("scheduler") == 0
    time.sleep(2.0)  # let the last tick's readings through

    for meter_id, period_ms in ((1, DEFAULT_MS), (2, OWN_MS)):
        stored = _stored(influx_v1, meter_id)
        ticks = sorted(stored)
        # read on its own ticks, every one of them, and on no other
        assert ticks == list(range(ticks[0], ticks[-1] + 1, period_ms)), (meter_id, ticks)
        assert ticks[0] % period_ms == 0
        assert stored == _expected(profile, meter_id, ticks, period_ms)
    # the slow class was read and left out on the ticks between
    energy = [fields for fields, _ in _stored(influx_v1, 1).values()]
    assert any("importActiveEnergy" in f for f in energy)
    assert any("importActiveEnergy" not in f for f in energy)
    for name in ("worker", "writer", "simulator"):
        assert processes.procs[name].poll() is None, processes.log(name)
