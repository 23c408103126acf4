"""The scheduler against real PostgreSQL and RabbitMQ: ticks, jobs, config changes and errors."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import time

import psycopg2
import pytest

from broker import JOB_QUEUES, SHARDS, Broker
from devservices.processes import emm_command
from emm.messages import Job, TickMarker
from emm.settings import SchedulerSettings
from postgres.config import load_config
from postgres.connection import connect
from scheduler.app import publish_jobs, run
from scheduler.jobs import MeterTick, PlanBook, build_jobs
from scheduler.repo import ConfigRepo
from tests.integration.amqp_util import drain_jobs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def migrate(dsn: str) -> None:
    result = subprocess.run(
        [*emm_command(), "migrate", "--seed-host", "127.0.0.1", "--seed-port", "1502"],
        env={**os.environ, "EMM_POSTGRES_DSN": dsn},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def execute(dsn: str, sql: str, *params: object) -> None:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
    conn.close()


def test_jobs_are_persistent_expire_with_the_tick_and_carry_the_plan(
    pg_dsn: str, amqp_url: str
) -> None:
    migrate(pg_dsn)
    for unit in (1, 2):
        execute(
            pg_dsn,
            "INSERT INTO energy_meters (host, port, slave_address, type, description) "
            "VALUES ('10.1.1.1', 502, %s, 'sdm630', 'board')",
            unit,
        )
    with connect(pg_dsn) as conn:
        config = load_config(conn)
    tick_ms = int(time.time() * 1000) // 1000 * 1000
    due = [MeterTick(mc, tick_ms + 60_000, 0, True) for mc in config.meters]
    jobs = build_jobs(config.meters, due, tick_ms, PlanBook())

    async def go() -> int:
        broker = Broker(amqp_url)
        await broker.connect(retry_forever=False)
        try:
            return await publish_jobs(broker, jobs, tick_ms + 60_000)
        finally:
            await broker.close()

    assert asyncio.run(go()) == 3
    got = sorted(drain_jobs(amqp_url), key=lambda g: Job.decode(g.body).meter.id)
    assert len(got) == 3
    decoded = [Job.decode(g.body) for g in got]
    assert [j.meter.id for j in decoded] == [1, 2, 3]
    assert {j.tick_ms for j in decoded} == {tick_ms}
    for g, j in zip(got, decoded, strict=True):
        assert g.properties.delivery_mode == 2
        assert g.properties.message_id == f"{j.meter.id}@{tick_ms}"
        assert 0 < int(g.properties.expiration) <= 60_000
    sdm = decoded[1]
    assert (sdm.meter.host, sdm.meter.unit_id, sdm.meter.description) == ("10.1.1.1", 1, "board")
    assert [(r.function_code, r.address, r.count) for r in sdm.plan.requests] == [
        (4, 0, 80),
        (4, 80, 28),
        (4, 200, 70),
        (4, 334, 48),
    ]
    assert len(sdm.plan.registers) == 85


def test_ticks_pick_up_new_meters_and_report_bad_rows(
    pg_dsn: str, amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    migrate(pg_dsn)
    # A register row the database accepts but the codec cannot use: a bool on function code 3.
    execute(
        pg_dsn,
        "INSERT INTO registers (type, register_address, measurement_name, data_type, "
        "function_code) VALUES ('virtual_modbustcp', 7, 'brokenBit', 9, 3)",
    )
    execute(
        pg_dsn,
        "INSERT INTO energy_meters (host, port, slave_address, type) "
        "VALUES ('10.0.0.9', 502, 1, 'no_such_type')",
    )
    settings = SchedulerSettings(postgres_dsn=pg_dsn, amqp_url=amqp_url, read_cron="* * * * * *")

    bodies: list[bytes] = []
    markers: list[TickMarker] = []

    async def go() -> None:
        # Jobs live one tick (1 s here), so collect them as they come.
        collector = Broker(amqp_url)
        await collector.connect(retry_forever=False)

        async def collect(delivery) -> None:
            if TickMarker.matches(delivery.body):
                markers.append(TickMarker.decode(delivery.body))
            else:
                bodies.append(delivery.body)
            await delivery.ack()

        for queue in JOB_QUEUES:
            await collector.consume(queue, collect)
        stop = asyncio.Event()
        task = asyncio.create_task(run(settings, stop))
        await asyncio.sleep(2.2)
        await asyncio.to_thread(
            execute,
            pg_dsn,
            "INSERT INTO energy_meters (host, port, slave_address, type) "
            "VALUES ('127.0.0.1', 1503, 4, 'virtual_modbustcp')",
        )
        await asyncio.sleep(2.0)
        stop.set()
        await asyncio.wait_for(task, 10)
        await asyncio.sleep(0.3)
        await collector.close()

    with caplog.at_level(logging.INFO):
        asyncio.run(go())
    jobs = [Job.decode(body) for body in bodies]
    ticks = sorted({j.tick_ms for j in jobs})
    assert len(ticks) >= 3
    assert all(t % 1000 == 0 for t in ticks)
    assert ticks == list(range(ticks[0], ticks[-1] + 1, 1000))
    per_tick = {t: sorted(j.meter.id for j in jobs if j.tick_ms == t) for t in ticks}
    assert per_tick[ticks[0]] == [1]
    assert per_tick[ticks[-1]] == [1, 3]  # the new meter, from the next tick on
    assert all(ids in ([1], [1, 3]) for ids in per_tick.values())
    for j in jobs:
        assert [r.name for r in j.plan.registers] == ["test_measurement"]
    # every tick, a marker to every shard saying how many jobs it got
    for t in ticks:
        of_tick = [m for m in markers if m.tick_ms == t]
        assert len(of_tick) == SHARDS
        assert sum(m.jobs for m in of_tick) == len(per_tick[t])
        assert {m.busy_shards for m in of_tick} == {len([m for m in of_tick if m.jobs])}

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    bad_row = [w for w in warnings if "registers row id=" in w and "brokenBit" in w]
    bad_meter = [w for w in warnings if "energy_meters row id=2 skipped" in w]
    # once, not at every tick: the problems did not change
    assert (len(bad_row), len(bad_meter)) == (1, 1)
    assert "bool does not fit function_code 3" in bad_row[0]
    assert "type 'no_such_type' has no usable registers" in bad_meter[0]


def test_database_outage_keeps_the_last_configuration(pg_dsn: str) -> None:
    migrate(pg_dsn)
    repo = ConfigRepo(pg_dsn)
    first = repo.load()
    assert first is not None and [m.meter.id for m in first.meters] == [1]
    # The database "goes away": the kept connection is killed and no new one can be made.
    assert repo._conn is not None
    execute(pg_dsn, "SELECT pg_terminate_backend(%s)", repo._conn.get_backend_pid())
    repo.dsn = "postgresql://nobody@127.0.0.1:1/none"
    assert repo.load() is first
    assert repo.load() is first
    repo.dsn = pg_dsn
    execute(
        pg_dsn,
        "INSERT INTO energy_meters (host, port, slave_address, type) "
        "VALUES ('127.0.0.1', 1503, 4, 'virtual_modbustcp')",
    )
    again = repo.load()
    assert again is not None and [m.meter.id for m in again.meters] == [1, 2]
