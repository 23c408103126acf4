"""Fixtures: real services for the integration tests, found in this order:

1. a URL in the environment (`EMM_TEST_POSTGRES_DSN`, `EMM_TEST_AMQP_URL`,
   `EMM_TEST_INFLUX_V1_URL`, `EMM_TEST_INFLUX_V2_URL`);
2. a container started with testcontainers, when a Docker engine answers;
3. a local server: PostgreSQL and RabbitMQ on their default loopback ports, InfluxDB 1.x and
   VictoriaMetrics started from their binaries in a temporary folder.
If none is found the test is skipped with the reason, except under CI (`CI` set), where it fails.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import localservices
from tests.localservices import Processes

CI = bool(os.environ.get("CI"))
ROOT = Path(__file__).resolve().parent.parent


def unavailable(reason: str) -> None:
    """Skip locally, fail under CI: a CI run must not pass by skipping the real services."""
    if CI:
        pytest.fail(f"service unavailable under CI: {reason}")
    pytest.skip(reason)


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


_docker_state: dict[str, bool] = {}


def docker_answers() -> bool:
    """Whether a Docker engine answers (checked once)."""
    if "ok" not in _docker_state:
        ok = False
        if not (os.environ.get("DOCKER_HOST") or Path("/var/run/docker.sock").exists()):
            _docker_state["ok"] = False
            return False
        with contextlib.suppress(Exception), warnings.catch_warnings():
            # A failed ping leaves the client's socket to the garbage collector.
            warnings.simplefilter("ignore", ResourceWarning)
            import docker

            client = docker.from_env(timeout=3)
            try:
                ok = bool(client.ping())
            finally:
                client.close()
                gc.collect()
        _docker_state["ok"] = ok
    return _docker_state["ok"]


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A DSN of a PostgreSQL server where the tests may create databases."""
    if os.environ.get("EMM_TEST_POSTGRES_DSN"):
        yield os.environ["EMM_TEST_POSTGRES_DSN"]
        return
    if docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:15-alpine", driver=None) as pg:
            yield pg.get_connection_url()
        return
    if port_open("127.0.0.1", 5432):
        yield "postgresql://postgres@127.0.0.1:5432/postgres"
        return
    unavailable("no PostgreSQL: set EMM_TEST_POSTGRES_DSN or run one on 127.0.0.1:5432")


def _with_dbname(dsn: str, dbname: str) -> str:
    parts = urllib.parse.urlsplit(dsn)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{dbname}"))


@pytest.fixture
def pg_dsn(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    import psycopg2

    name = f"emm_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(postgres_server)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_dbname(postgres_server, name)
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


# --------------------------------------------------------------------------- RabbitMQ


@pytest.fixture(scope="session")
def amqp_server() -> Iterator[str]:
    """An AMQP URL; a private vhost is made for the session when rabbitmqctl is at hand."""
    if os.environ.get("EMM_TEST_AMQP_URL"):
        yield os.environ["EMM_TEST_AMQP_URL"]
        return
    if docker_answers():
        from testcontainers.rabbitmq import RabbitMqContainer

        with RabbitMqContainer("rabbitmq:3.13") as rmq:
            params = rmq.get_connection_params()
            yield f"amqp://guest:guest@{params.host}:{params.port}/%2F"
        return
    if not port_open("127.0.0.1", 5672):
        unavailable("no RabbitMQ: set EMM_TEST_AMQP_URL or run one on 127.0.0.1:5672")
    ctl = shutil.which("rabbitmqctl")
    vhost = f"emm-test-{os.getpid()}"
    made = False
    if ctl and os.geteuid() == 0:
        made = (
            subprocess.run([ctl, "add_vhost", vhost], capture_output=True, timeout=60).returncode
            == 0
        )
        if made:
            subprocess.run(
                [ctl, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
                capture_output=True,
                timeout=60,
                check=True,
            )
    path = urllib.parse.quote(vhost, safe="") if made else "%2F"
    try:
        yield f"amqp://guest:guest@127.0.0.1:5672/{path}"
    finally:
        if made:
            subprocess.run([ctl, "delete_vhost", vhost], capture_output=True, timeout=60)


@pytest.fixture
def amqp_url(amqp_server: str) -> str:
    """The AMQP URL with the project's queues deleted, so each test starts empty."""
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(amqp_server))
    try:
        ch = conn.channel()
        for queue in ("emm.jobs", "emm.readings", "emm.jobs.dead", "emm.readings.dead"):
            ch.queue_delete(queue)
    finally:
        conn.close()
    return amqp_server


# --------------------------------------------------------------------------- InfluxDB


@pytest.fixture(scope="session")
def influx_v1_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of an InfluxDB 1.x server."""
    if os.environ.get("EMM_TEST_INFLUX_V1_URL"):
        yield os.environ["EMM_TEST_INFLUX_V1_URL"].rstrip("/")
        return
    if docker_answers():
        from testcontainers.core.container import DockerContainer

        with DockerContainer("influxdb:1.8").with_exposed_ports(8086) as c:
            url = f"http://{c.get_container_host_ip()}:{c.get_exposed_port(8086)}"
            localservices.wait_http(f"{url}/ping")
            yield url
        return
    try:
        service = localservices.start_influxdb_v1(tmp_path_factory.mktemp("influxdb"))
    except (FileNotFoundError, RuntimeError) as exc:
        unavailable(f"no InfluxDB 1.x: {exc}")
        return
    try:
        yield service.url
    finally:
        service.stop()


@pytest.fixture(scope="session")
def influx_v2_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a server speaking InfluxDB's v2 write API and VictoriaMetrics' export API."""
    if os.environ.get("EMM_TEST_INFLUX_V2_URL"):
        yield os.environ["EMM_TEST_INFLUX_V2_URL"].rstrip("/")
        return
    if docker_answers():
        from testcontainers.core.container import DockerContainer

        with (
            DockerContainer("victoriametrics/victoria-metrics:v1.106.1")
            .with_command("-dedup.minScrapeInterval=1ms -search.latencyOffset=0s")
            .with_exposed_ports(8428) as c
        ):
            url = f"http://{c.get_container_host_ip()}:{c.get_exposed_port(8428)}"
            localservices.wait_http(f"{url}/health")
            yield url
        return
    try:
        service = localservices.start_victoriametrics(tmp_path_factory.mktemp("victoria"))
    except (FileNotFoundError, RuntimeError) as exc:
        unavailable(f"no VictoriaMetrics: {exc}")
        return
    try:
        yield service.url
    finally:
        service.stop()


def influxql_rows(body: bytes) -> list[dict[str, Any]]:
    """The rows of an InfluxDB 1.x `/query` answer as dicts; an error in it fails the test."""
    import json

    rows: list[dict[str, Any]] = []
    for result in json.loads(body).get("results", []):
        if "error" in result:
            raise AssertionError(result["error"])
        for series in result.get("series", []):
            for values in series["values"]:
                rows.append(dict(zip(series["columns"], values, strict=True)))
    return rows


class InfluxV1:
    """A test database on an InfluxDB 1.x server, with a tiny query helper."""

    def __init__(self, url: str, database: str) -> None:
        self.url = url
        self.database = database

    def query(self, q: str) -> list[dict[str, Any]]:
        """Rows of an InfluxQL query as dicts (time in ms)."""
        params = urllib.parse.urlencode({"db": self.database, "q": q, "epoch": "ms"})
        with urllib.request.urlopen(f"{self.url}/query?{params}", timeout=10) as resp:
            return influxql_rows(resp.read())

    def write(self, lines: str) -> None:
        """Write line protocol (ms precision) directly."""
        params = urllib.parse.urlencode({"db": self.database, "precision": "ms"})
        urllib.request.urlopen(f"{self.url}/write?{params}", data=lines.encode(), timeout=10).read()

    def post(self, q: str) -> None:
        body = urllib.parse.urlencode({"q": q}).encode()
        urllib.request.urlopen(f"{self.url}/query", data=body, timeout=10).read()


@pytest.fixture
def influx_v1(influx_v1_server: str) -> Iterator[InfluxV1]:
    db = InfluxV1(influx_v1_server, f"emm_test_{uuid.uuid4().hex[:12]}")
    db.post(f'CREATE DATABASE "{db.database}"')
    try:
        yield db
    finally:
        db.post(f'DROP DATABASE "{db.database}"')


class VictoriaMetrics:
    """Reads back what was written through the v2 write API."""

    def __init__(self, url: str) -> None:
        self.url = url

    def export(self, match: str, start_ms: int | None = None) -> list[dict[str, Any]]:
        """Raw samples of the series matching `match` (one dict per series)."""
        import json

        params = {"match[]": match}
        if start_ms is not None:
            params["start"] = str(start_ms / 1000)
        body = urllib.parse.urlencode(params).encode()
        with urllib.request.urlopen(f"{self.url}/api/v1/export", data=body, timeout=10) as r:
            return [json.loads(line) for line in r.read().decode().splitlines() if line]

    def flush(self) -> None:
        """Make just-written samples visible to queries."""
        urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=10).read()


@pytest.fixture
def victoria(influx_v2_server: str) -> VictoriaMetrics:
    return VictoriaMetrics(influx_v2_server)


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    return localservices.free_port()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()


def wait_for(predicate: Callable[[], Any], timeout_s: float, interval_s: float = 0.2) -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(interval_s)
