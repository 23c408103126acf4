"""A simulated SunSpec inverter (SMA's shipped profile: common, inverter 103 and two MPP
trackers of model 160) through the whole pipeline: simulator, scheduler, worker, writer and
InfluxDB 1.x. Every stored number (scaled by the scale factor read with it) and every text
field of `meter_info` must be exactly what the simulator served."""

from __future__ import annotations

import time

import psycopg2
import pytest

from devservices.net import free_port, port_open, wait_for
from devservices.processes import Processes
from devservices.readers import InfluxQL
from emm.profiles import shipped_profile
from postgres.connection import connect
from postgres.profiles import import_profile
from postgres.schema import migrate
from simulator.model import MeterSpec, expected, expected_text

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TYPE = "sma_sunspec"
UNIT = 126  # SMA's SunSpec unit id


def _rows(db: InfluxQL, measurement: str) -> dict[int, dict[str, object]]:
    return {
        row["time"]: {k: v for k, v in row.items() if v is not None and k != "time"}
        for row in db.query(f"SELECT * FROM {measurement} WHERE meter_id = '1'")
    }


def test_a_sunspec_inverter_is_stored_exactly(
    pg_dsn: str, amqp_url: str, influx_v1: InfluxQL, processes: Processes
) -> None:
    profile = shipped_profile(TYPE)
    assert profile is not None
    sim_port = free_port()
    with connect(pg_dsn) as conn:
        migrate(conn)
        import_profile(conn, profile, replace=True)
    with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO energy_meters (id, host, port, slave_address, type) "
            "VALUES (1, '127.0.0.1', %s, %s, %s)",
            (sim_port, UNIT, TYPE),
        )
    conn.close()
    env = {
        "EMM_POSTGRES_DSN": pg_dsn,
        "EMM_AMQP_URL": amqp_url,
        "EMM_INFLUX_API": "v1",
        "EMM_INFLUX_URL": influx_v1.url,
        "EMM_INFLUX_BUCKET": influx_v1.database,
        "EMM_READ_CRON": "*/2 * * * * *",
        "EMM_WRITER_FLUSH_INTERVAL_MS": "100",
        # values change every 2 s, with the ticks: a read up to 1 s late sees its tick's
        "EMM_SIMULATOR_STEP_S": "2",
    }
    processes.start("simulator", ["simulator", "--profile", TYPE, "--port", str(sim_port)], env)
    wait_for(lambda: port_open("127.0.0.1", sim_port), 15)
    processes.start("writer", ["writer"], env)
    processes.start("worker", ["worker"], env)
    # the first tick reads the identity (once, then daily): the worker must be there for it
    processes.wait_log("worker", "worker started", 30)
    processes.start("scheduler", ["scheduler"], env)
    wait_for(lambda: len(_rows(influx_v1, "energy")) >= 3, 40, 0.5)
    assert processes.stop("scheduler") == 0
    time.sleep(2.0)  # the last tick's reading

    # the identity (strings, the tracker count) is read once, then daily
    once = {r.name for r in profile.registers if r.poll_every == 0}
    assert {"maker", "model", "serial", "firmware", "m160.N"} <= once
    spec = MeterSpec.of_type(TYPE, seed=0, step_s=2.0)
    energy, info = _rows(influx_v1, "energy"), _rows(influx_v1, "meter_info")
    ticks = sorted(energy)
    assert sorted(info) == ticks
    for n, tick in enumerate(ticks):
        want = expected(spec, tick)
        if n > 0:
            want = {k: v for k, v in want.items() if k not in once}
        got = {k: v for k, v in energy[tick].items() if k not in ("type", "description")}
        assert got == {**want, "meter_id": "1"}, tick
        text = expected_text(spec, tick)
        if n > 0:  # state and events on every tick
            text = {k: v for k, v in text.items() if k not in once}
        got_text = {k: v for k, v in info[tick].items() if k != "type"}
        assert got_text == {**text, "meter_id": "1"}, tick
    first = info[ticks[0]]
    assert (first["maker"], first["model"], first["serial"]) == (
        "SMA",
        "STP10.0-3AV-40",
        "serial-0",
    )
    # numbers with their scale factors: AC power in W, energies as counters, the state as text
    assert all(f in energy[ticks[0]] for f in ("acPower", "acEnergy", "dcPower1", "m103.W_SF"))
    # the state follows the daylight curve: tracking while the array gives power
    day = energy[ticks[0]]["dcPower"] > 0
    assert first["operatingState"] == ("MPPT" if day else "SLEEPING")
    assert energy[ticks[0]]["m160.N"] == 2.0  # two trackers
    for name in ("worker", "writer", "simulator"):
        assert processes.procs[name].poll() is None, processes.log(name)
