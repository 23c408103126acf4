"""Least privilege on real services: each service's credentials do what it must and are refused
what it must not (RabbitMQ users from `broker.access`, the scheduler's read-only PostgreSQL role,
InfluxDB 1.x users: the writer's reads and writes its one database, Grafana's only reads), and a
pipeline of such services stores its
readings."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import psycopg2
import pytest

from broker import Broker
from broker.topology import JOBS, MARKERS, READINGS, job_queue
from devservices import rabbitmq
from devservices.influx import Service, start_influxdb_v1
from devservices.net import free_port, port_open, wait_for
from devservices.processes import Processes, emm_command
from emm.errors import ConfigError
from simulator.model import expected
from tests.helpers import unavailable

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

STEP_S = 2
DATABASE = "energy"
OTHER = "other"  # a database on the same server that neither service may use
WRITER = ("emm-writer", "writer-pw")
GRAFANA = ("emm-grafana", "grafana-pw")
ADMIN = ("admin", "admin-pw")


@pytest.fixture(scope="module")
def users() -> Iterator[dict[str, str]]:
    """service -> AMQP URL of its own user, in a private vhost holding the topology."""
    if not port_open("127.0.0.1", 5672):
        unavailable("no RabbitMQ on 127.0.0.1:5672")
    with contextlib.ExitStack() as stack:
        try:
            urls = stack.enter_context(rabbitmq.service_users())
        except rabbitmq.VhostUnavailable as exc:
            unavailable(f"cannot make RabbitMQ users: {exc}")
        yield urls


@pytest.fixture(scope="module")
def influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A private InfluxDB 1.x with auth on: an admin, the writer's user (READ and WRITE on the
    database: it reads its last counter values back at start) and Grafana's (READ), as an
    operator makes them, and a second database neither may use."""
    try:
        service = start_influxdb_v1(tmp_path_factory.mktemp("influx-auth"), auth_enabled=True)
    except FileNotFoundError as exc:
        unavailable(str(exc))
    try:
        # with auth on, the first user may be made without one, and must be an admin
        _influxql(
            service.url, f"CREATE USER {ADMIN[0]} WITH PASSWORD '{ADMIN[1]}' WITH ALL PRIVILEGES"
        )
        for statement in (
            f'CREATE DATABASE "{DATABASE}"',
            f'CREATE DATABASE "{OTHER}"',
            f"CREATE USER \"{WRITER[0]}\" WITH PASSWORD '{WRITER[1]}'",
            # READ and WRITE on this one database (a GRANT replaces, not adds, in 1.x)
            f'GRANT ALL ON "{DATABASE}" TO "{WRITER[0]}"',
            f"CREATE USER \"{GRAFANA[0]}\" WITH PASSWORD '{GRAFANA[1]}'",
            f'GRANT READ ON "{DATABASE}" TO "{GRAFANA[0]}"',
        ):
            assert _influxql(service.url, statement, ADMIN) == (
                200,
                '{"results":[{"statement_id":0}]}\n',
            ), statement
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def scheduler_role(postgres_server: str) -> Iterator[str]:
    """A login role for the scheduler (roles belong to the server: a unique name)."""
    role = f"emm_scheduler_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(postgres_server)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE ROLE "{role}" LOGIN')
        yield role
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP ROLE IF EXISTS "{role}"')
        admin.close()


def _influxql(
    url: str, statement: str, user: tuple[str, str] | None = None, database: str = "energy"
) -> tuple[int, str]:
    """POST an InfluxQL statement as `user`; (HTTP status, body)."""
    fields = {"q": statement, "db": database}
    headers = _basic(user) if user is not None else {}
    return _http(f"{url}/query", urllib.parse.urlencode(fields).encode(), headers)


def _http(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _basic(user: tuple[str, str]) -> dict[str, str]:
    """The header the writer sends for EMM_INFLUX_TOKEN=user:password (API v1)."""
    return {"Authorization": "Basic " + base64.b64encode(":".join(user).encode()).decode()}


def _user(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.username or "", urllib.parse.unquote(parts.path[1:])


def _refused(url: str, action: Callable[[Any], object]) -> str:
    """The reply RabbitMQ closes the channel with when `url`'s user tries `action`."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = conn.channel()
        channel.confirm_delivery()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as raised:
            action(channel)
        assert raised.value.reply_code == 403
        return str(raised.value.reply_text)
    finally:
        conn.close()


def _publish(exchange: str, routing_key: str) -> Callable[[Any], object]:
    return lambda ch: ch.basic_publish(
        exchange, routing_key, b"{}", pika.BasicProperties(delivery_mode=2)
    )


def _consume(queue: str) -> Callable[[Any], object]:
    return lambda ch: ch.basic_consume(queue, lambda *_: None)


def _declare(queue: str) -> Callable[[Any], object]:
    return lambda ch: ch.queue_declare(queue, durable=True)


def test_each_rabbitmq_user_is_refused_what_its_service_must_not_do(
    users: dict[str, str],
) -> None:
    def refusal(kind: str, service: str, name: str) -> str:
        user, vhost = _user(users[service])
        return (
            f"ACCESS_REFUSED - access to {kind} '{name}' in vhost '{vhost}' "
            f"refused for user '{user}'"
        )

    def exchange(service: str, name: str) -> str:
        return refusal("exchange", service, name)

    def queue(service: str, name: str) -> str:
        return refusal("queue", service, name)

    shard = job_queue(7)
    cases = [
        # a worker cannot publish a job, nor consume readings, nor reach a queue by name
        ("worker", _publish(JOBS, shard), exchange("worker", JOBS)),
        ("worker", _consume(READINGS), queue("worker", READINGS)),
        ("worker", _publish("", shard), exchange("worker", "amq.default")),
        ("worker", _declare("emm.mine"), queue("worker", "emm.mine")),
        # the writer cannot publish jobs, nor readings
        ("writer", _publish(JOBS, shard), exchange("writer", JOBS)),
        ("writer", _publish(READINGS, READINGS), exchange("writer", READINGS)),
        ("writer", _consume(shard), queue("writer", shard)),
        # the scheduler cannot consume anything, nor publish readings or markers
        ("scheduler", _consume(shard), queue("scheduler", shard)),
        ("scheduler", _consume(READINGS), queue("scheduler", READINGS)),
        ("scheduler", _consume("emm.jobs.dead"), queue("scheduler", "emm.jobs.dead")),
        ("scheduler", _publish(READINGS, READINGS), exchange("scheduler", READINGS)),
        ("scheduler", _publish(MARKERS, shard), exchange("scheduler", MARKERS)),
    ]
    for service, action, reply in cases:
        assert _refused(users[service], action) == reply, (service, reply)


def test_the_scheduler_role_reads_and_changes_nothing(pg_dsn: str, scheduler_role: str) -> None:
    _migrate(pg_dsn, scheduler_role)
    as_scheduler = _as_role(pg_dsn, scheduler_role)
    with psycopg2.connect(as_scheduler) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM energy_meters")
        assert cur.fetchone() == (1,)
        cur.execute("SELECT count(*) > 0 FROM registers")
        assert cur.fetchone() == (True,)
    for statement, table in (
        (
            "INSERT INTO energy_meters (host, port, slave_address, type) VALUES ('x', 502, 1, 't')",
            "energy_meters",
        ),
        ("UPDATE registers SET scale = 2", "registers"),
        ("DELETE FROM gateways", "gateways"),
        ("TRUNCATE meter_types", "meter_types"),
    ):
        with psycopg2.connect(as_scheduler) as conn, conn.cursor() as cur:
            with pytest.raises(psycopg2.errors.InsufficientPrivilege) as raised:
                cur.execute(statement)
            assert str(raised.value).strip() == f"permission denied for table {table}"
    with psycopg2.connect(as_scheduler) as conn, conn.cursor() as cur:
        with pytest.raises(psycopg2.errors.InsufficientPrivilege) as raised:
            cur.execute("CREATE TABLE mine (x int)")
        assert str(raised.value).splitlines()[0] == "permission denied for schema public"


def test_the_writer_may_only_use_its_database_and_grafana_only_read(influx: Service) -> None:
    line = b"energy,meter_id=1 v=1 1700000000000"
    write = f"{influx.url}/write?db={DATABASE}&precision=ms"
    assert _http(write, line, _basic(WRITER)) == (204, "")
    status, body = _http(write, line, _basic(GRAFANA))
    assert status == 403
    assert body.strip() == (
        '{"error":"'
        + f'\\"{GRAFANA[0]}\\" user is not authorized to write to database \\"{DATABASE}\\""'
        + "}"
    )
    query = "SELECT v FROM energy"
    assert _influxql(influx.url, query, GRAFANA)[0] == 200
    assert _influxql(influx.url, query, WRITER)[0] == 200
    status, body = _http(f"{influx.url}/write?db={OTHER}&precision=ms", line, _basic(WRITER))
    assert status == 403
    assert body.strip() == (
        '{"error":"'
        + f'\\"{WRITER[0]}\\" user is not authorized to write to database \\"{OTHER}\\""'
        + "}"
    )
    status, body = _influxql(influx.url, query, WRITER, database=OTHER)
    assert status == 403
    assert body.strip() == (
        '{"error":"error authorizing query: '
        + f"{WRITER[0]} not authorized to execute statement 'SELECT v FROM energy', "
        + f"requires READ on {OTHER}"
        + '"}'
    )
    status, body = _influxql(influx.url, f'DROP DATABASE "{DATABASE}"', WRITER)
    assert status == 403


def test_a_pipeline_of_least_privileged_services_stores_its_readings(
    users: dict[str, str],
    influx: Service,
    pg_dsn: str,
    scheduler_role: str,
    processes: Processes,
    tmp_path: Path,
) -> None:
    _migrate(pg_dsn, scheduler_role, seed_port=(sim_port := free_port()))
    secrets = tmp_path / "secrets"
    secrets.mkdir()

    def secret(name: str, value: str) -> str:
        (secrets / name).write_text(value)
        return str(secrets / name)

    common = {"EMM_READ_CRON": f"*/{STEP_S} * * * * *"}
    # each service gets its own secrets only, in files
    env = {
        "simulator": {
            "EMM_SIMULATOR_HOST": "127.0.0.1",
            "EMM_SIMULATOR_PORT": str(sim_port),
            "EMM_SIMULATOR_STEP_S": str(STEP_S),
        },
        "scheduler": {
            "EMM_POSTGRES_DSN_FILE": secret("scheduler-dsn", _as_role(pg_dsn, scheduler_role)),
            "EMM_AMQP_URL_FILE": secret("scheduler-amqp", users["scheduler"]),
        },
        "worker": {"EMM_AMQP_URL_FILE": secret("worker-amqp", users["worker"])},
        "writer": {
            "EMM_AMQP_URL_FILE": secret("writer-amqp", users["writer"]),
            "EMM_INFLUX_TOKEN_FILE": secret("writer-influx", ":".join(WRITER)),
            "EMM_INFLUX_API": "v1",
            "EMM_INFLUX_URL": influx.url,
            "EMM_INFLUX_BUCKET": DATABASE,
        },
    }
    processes.start("simulator", ["simulator"], {**common, **env["simulator"]})
    wait_for(lambda: port_open("127.0.0.1", sim_port), 15)
    for name in ("writer", "worker", "scheduler"):
        processes.start(name, [name], {**common, **env[name]})
    start_ms = int(time.time() * 1000)

    def points() -> dict[int, float]:
        """What Grafana's user sees."""
        rows = _select(influx.url, "SELECT test_measurement FROM energy", GRAFANA)
        return {
            row["time"]: row["test_measurement"] for row in rows if row["time"] >= start_ms - 10_000
        }

    wait_for(lambda: len(points()) >= 3, 40, 0.5)
    # a worker's forged job, sent through the only exchange a worker may reach the job queues by
    forged = pika.BlockingConnection(pika.URLParameters(users["worker"]))
    try:
        channel = forged.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            MARKERS, job_queue(0), b'{"v":1,"kind":"job"}', pika.BasicProperties(delivery_mode=2)
        )
    finally:
        forged.close()
    for name in ("scheduler", "worker", "writer", "simulator"):
        assert processes.procs[name].poll() is None, processes.log(name)
    stored = points()
    ticks = sorted(stored)
    # on the tick grid, with the simulator's values (that no tick is lost is for the fault tests)
    assert len(ticks) >= 3
    assert all(t % (STEP_S * 1000) == 0 for t in ticks), ticks
    assert [stored[t] for t in ticks] == [expected(0, t, STEP_S)["test_measurement"] for t in ticks]
    assert "ACCESS_REFUSED" not in processes.log("worker") + processes.log("writer")
    wait_for(lambda: "dead-lettered" in processes.log("worker"), 10, 0.2)
    assert f"a job published through {MARKERS}, not {JOBS}" in processes.log("worker")


def _select(url: str, query: str, user: tuple[str, str]) -> list[dict[str, Any]]:
    """The rows of an InfluxQL query as `user`, time in ms."""
    fields = {"q": query, "db": DATABASE, "epoch": "ms"}
    status, body = _http(f"{url}/query", urllib.parse.urlencode(fields).encode(), _basic(user))
    assert status == 200, body
    rows: list[dict[str, Any]] = []
    for result in json.loads(body)["results"]:
        for series in result.get("series", []):
            rows += [dict(zip(series["columns"], row, strict=True)) for row in series["values"]]
    return rows


def _as_role(dsn: str, role: str) -> str:
    parts = urllib.parse.urlsplit(dsn)
    return urllib.parse.urlunsplit(
        parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port or 5432}")
    )


def _migrate(dsn: str, role: str, seed_port: int = 502) -> None:
    done = subprocess.run(
        [
            *emm_command(),
            "migrate",
            "--seed-host",
            "127.0.0.1",
            "--seed-port",
            str(seed_port),
            "--grant-read",
            role,
        ],
        env={**os.environ, "EMM_POSTGRES_DSN": dsn},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"role {role} may read the tables"


def test_a_service_that_may_not_declare_says_what_is_missing(
    users: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Last in this module: it deletes a queue, and declares everything again after."""
    admin = pika.BlockingConnection(pika.URLParameters(users["admin"]))
    try:
        admin.channel().queue_delete("emm.readings.dead")
    finally:
        admin.close()

    async def connect(url: str) -> None:
        broker = Broker(url, name="emm-test")
        try:
            await broker.connect(retry_forever=False)
        finally:
            await broker.close()

    with pytest.raises(ConfigError) as raised:
        asyncio.run(connect(users["writer"]))
    assert str(raised.value) == (
        "RabbitMQ has no queue emm.readings.dead and this user may not declare it: load the "
        "definitions `emm secrets` writes, or start a service once as a user that may configure"
    )
    # the administrator declares it again, and finds every other queue declared by the
    # definitions exactly as the services declare them (else it would migrate them, saying so)
    with caplog.at_level(logging.WARNING, logger="broker.topology"):
        asyncio.run(connect(users["admin"]))
    assert caplog.records == []
    asyncio.run(connect(users["writer"]))
