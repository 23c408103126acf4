"""PostgreSQL goes away: the scheduler ticks on with the configuration it has, says so, and
picks up changes once the database is back."""

from __future__ import annotations

import time

import psycopg2
import pytest

from devservices.influx import PrivateInfluxDB
from devservices.net import wait_for
from devservices.postgres import PrivatePostgres
from devservices.processes import Processes
from devservices.rabbitmq import PrivateRabbitMQ
from tests.faults.harness import Pipeline, check, now_ms, published_ticks, tick_floor

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def test_scheduler_keeps_ticking_while_postgres_is_down(
    postgres: PrivatePostgres,
    rabbit: PrivateRabbitMQ,
    influx: PrivateInfluxDB,
    processes: Processes,
) -> None:
    pipeline = Pipeline(
        processes, postgres.dsn, rabbit.url, influx.url, meters=6, period_s=2, workers=1
    )
    pipeline.start_simulator()
    # The sixth meter joins later: disabled for now.
    with psycopg2.connect(postgres.dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE energy_meters SET enabled = false WHERE description = 'sim-5' RETURNING id"
        )
        (late_id,) = cur.fetchone()
    conn.close()
    late_spec = pipeline.specs.pop(late_id)
    first = pipeline.start_services()
    p_ms = pipeline.period_ms
    time.sleep(2 * pipeline.period_s + 0.5)

    postgres.stop()
    down_at = now_ms()
    time.sleep(5 * pipeline.period_s)
    up_at = now_ms()
    postgres.start()
    wait_for(lambda: "PostgreSQL is back" in pipeline.log("scheduler"), 3 * pipeline.period_s)
    with psycopg2.connect(postgres.dsn) as conn, conn.cursor() as cur:
        cur.execute("UPDATE energy_meters SET enabled = true WHERE id = %s", (late_id,))
    conn.close()
    changed_at = now_ms()
    last = tick_floor(changed_at, pipeline.period_s) + 3 * p_ms
    time.sleep(max(0.0, (last + 1500 - now_ms()) / 1000))

    # The five meters were read on every tick, through the outage.
    verdict = check(pipeline, influx, first, tick_floor(changed_at, pipeline.period_s))
    assert verdict.lost == [], str(verdict)
    assert verdict.dup == [], str(verdict)
    outage_ticks = [t for t in published_ticks(pipeline.log("scheduler")) if down_at < t < up_at]
    assert len(outage_ticks) >= 4
    log = pipeline.log("scheduler")
    # said once when it starts and once when it ends, not every tick
    assert log.count(" not reachable since ") == 1
    assert log.count("PostgreSQL is back after ") == 1
    assert "using the last configuration, loaded " in log
    # The sixth meter from the first tick after the change on.
    rows = influx.query(f"SELECT count(up) FROM meter_status WHERE meter_id = '{late_id}'")
    assert rows and rows[0]["count"] >= 2
    pipeline.specs[late_id] = late_spec
    joined = tick_floor(changed_at, pipeline.period_s) + p_ms
    late_verdict = check(pipeline, influx, joined + p_ms, last)
    assert late_verdict.lost == [], str(late_verdict)
