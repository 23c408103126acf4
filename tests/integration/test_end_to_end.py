"""The whole pipeline via the real entry points: migrate, simulator, scheduler, worker, writer."""

from __future__ import annotations

import re
import subprocess
import time
import uuid

import psycopg2
import pytest

from devservices.net import free_port, port_open, wait_for
from devservices.processes import Processes, emm_command
from simulator.model import expected
from tests.faults.harness import log_ms, published_ticks

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

STEP_S = 2  # the cron below ticks every 2 s and the simulator's value changes every 2 s


def logged_at(log: str, text: str) -> int:
    """When (ms) a service's log first said `text`."""
    return log_ms(next(line for line in log.splitlines() if text in line))


def _points(api: str, sink, description: str, start_ms: int) -> dict[int, float]:
    """{timestamp_ms: test_measurement} stored for the meter with `description`."""
    if api == "v1":
        rows = sink.query(
            f"SELECT test_measurement FROM energy WHERE description = '{description}'"
        )
        return {row["time"]: row["test_measurement"] for row in rows}
    sink.flush()
    series = sink.export(
        f'{{__name__="energy_test_measurement",description="{description}"}}', start_ms
    )
    points: dict[int, float] = {}
    for s in series:
        points.update(zip(s["timestamps"], s["values"], strict=True))
    return points


def _status(api: str, sink, description: str, start_ms: int) -> dict[int, float]:
    if api == "v1":
        rows = sink.query(f"SELECT up FROM meter_status WHERE description = '{description}'")
        return {row["time"]: 1.0 if row["up"] else 0.0 for row in rows}
    sink.flush()
    series = sink.export(f'{{__name__="meter_status_up",description="{description}"}}', start_ms)
    out: dict[int, float] = {}
    for s in series:
        out.update(zip(s["timestamps"], s["values"], strict=True))
    return out


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_readings_of_the_virtual_meter_reach_influxdb(
    api: str, request: pytest.FixtureRequest, pg_dsn: str, amqp_url: str, processes: Processes
) -> None:
    if api == "v1":
        sink = request.getfixturevalue("influx_v1")
        influx = {"EMM_INFLUX_URL": sink.url, "EMM_INFLUX_BUCKET": sink.database}
    else:
        sink = request.getfixturevalue("victoria")
        influx = {
            "EMM_INFLUX_URL": sink.url,
            "EMM_INFLUX_BUCKET": "energy",
            "EMM_INFLUX_ORG": "emm",
            "EMM_INFLUX_TOKEN": "test-token",
        }
    sim_port = free_port()
    description = f"e2e-{uuid.uuid4().hex[:8]}"
    env = {
        "EMM_POSTGRES_DSN": pg_dsn,
        "EMM_AMQP_URL": amqp_url,
        "EMM_INFLUX_API": api,
        "EMM_READ_CRON": f"*/{STEP_S} * * * * *",
        "EMM_SIMULATOR_HOST": "127.0.0.1",
        "EMM_SIMULATOR_PORT": str(sim_port),
        "EMM_SIMULATOR_STEP_S": str(STEP_S),
        "EMM_WRITER_FLUSH_INTERVAL_MS": "200",
        **influx,
    }

    migrate = subprocess.run(
        [*emm_command(), "migrate", "--seed-host", "127.0.0.1", "--seed-port", str(sim_port)],
        env={**__import__("os").environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert migrate.returncode == 0, migrate.stderr
    assert "applied migration(s) 1, 2" in migrate.stdout
    # The v2 sink is shared by tests: a unique description keeps this test's points apart.
    with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE energy_meters SET description = %s WHERE type = 'virtual_modbustcp'",
            (description,),
        )
        assert cur.rowcount == 1

    processes.start("simulator", ["simulator"], env)
    wait_for(lambda: port_open("127.0.0.1", sim_port), 15)
    for name in ("writer", "worker", "scheduler"):
        processes.start(name, [name], env)
    start_ms = int(time.time() * 1000)

    wait_for(lambda: len(_points(api, sink, description, start_ms)) >= 4, 40, 0.5)
    assert processes.stop("scheduler") == 0
    time.sleep(2.5)  # let the last tick's job and reading through
    points = _points(api, sink, description, start_ms)
    status = _status(api, sink, description, start_ms)

    ticks = sorted(points)
    assert len(ticks) >= 4
    assert all(t % (STEP_S * 1000) == 0 for t in ticks), ticks
    assert ticks == list(range(ticks[0], ticks[-1] + 1, STEP_S * 1000)), "a tick is missing"
    # The first point is the first tick the worker could read: the first the scheduler
    # published once the worker consumed (one published a little earlier may be read too),
    # unless the worker said it got that job past half a tick and so did not read it; and the
    # scheduler published from the first cron tick after it started (or the one after, when
    # loading the configuration took it past that tick). However slowly the processes start
    # on a loaded machine, no tick they could have read is missing without a word.
    period_ms = STEP_S * 1000
    published = published_ticks(processes.log("scheduler"))
    started_ms = logged_at(processes.log("scheduler"), "scheduler started")
    assert published[0] <= (started_ms // period_ms + 2) * period_ms, (started_ms, published)
    worker_log = processes.log("worker")
    consuming_ms = logged_at(worker_log, "worker started")
    late = {int(t) for t in re.findall(r"job \d+@(\d+) was [\d.]+ s past its tick", worker_log)}
    readable = [t for t in published if t >= consuming_ms and t not in late]
    assert readable and ticks[0] <= readable[0], (consuming_ms, published, sorted(late), ticks)
    assert [points[t] for t in ticks] == [expected(0, t, STEP_S)["test_measurement"] for t in ticks]
    assert {t: status[t] for t in ticks} == dict.fromkeys(ticks, 1.0)
    for name in ("worker", "writer", "simulator"):
        assert processes.procs[name].poll() is None, processes.log(name)
    assert "jobs published" in processes.log("scheduler")
