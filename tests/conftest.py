"""Fixtures: real services for the integration tests, found in this order:

1. a URL in the environment (`EMM_TEST_POSTGRES_DSN`, `EMM_TEST_AMQP_URL`,
   `EMM_TEST_INFLUX_V1_URL`, `EMM_TEST_INFLUX_V2_URL`);
2. a container started with testcontainers, when a Docker engine answers;
3. a local server: PostgreSQL and RabbitMQ on their default loopback ports, InfluxDB 1.x and
   VictoriaMetrics started from their binaries in a temporary folder.
If none is found the test is skipped with the reason, except under CI (`CI` set), where it fails.
Each fixture is a thin wrapper around a `devservices` factory that cleans up after itself (a
session fixture once every test of the session is done).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from broker.topology import QUEUES
from devservices import containers, influx, postgres, rabbitmq
from devservices.net import port_open
from devservices.processes import Processes
from devservices.readers import InfluxQL, VictoriaMetrics
from tests.helpers import unavailable

FAULTS = Path(__file__).resolve().parent / "faults"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--part",
        choices=("all", "parallel", "serial"),
        default="all",
        help="run every test, only those that may run beside others, or only those that need "
        "the machine to themselves: the fault tests (tests/faults) and tests marked `alone`. "
        "scripts/check runs the parallel part in several processes, then the serial part",
    )


def _is_fault(path: Path) -> bool:
    return path == FAULTS or FAULTS in path.parents


def _serial(item: pytest.Item) -> bool:
    return _is_fault(item.path) or item.get_closest_marker("alone") is not None


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Spare collecting the fault tests for the parallel part."""
    if config.getoption("part") == "parallel" and _is_fault(collection_path):
        return True
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect by `--part`."""
    part = config.getoption("part")
    if part == "all":
        return
    keep, drop = [], []
    for item in items:
        (keep if _serial(item) == (part == "serial") else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


# What the session fixtures made (a RabbitMQ vhost, containers, servers), released once every
# test is done rather than in the last test's teardown: that runs under the last test's timeout,
# and with parallel test processes any test may be the last of its process.
_SESSION = contextlib.ExitStack()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _SESSION.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A DSN of a PostgreSQL server where the tests may create databases."""
    if os.environ.get("EMM_TEST_POSTGRES_DSN"):
        yield os.environ["EMM_TEST_POSTGRES_DSN"]
    elif containers.docker_answers():
        yield _SESSION.enter_context(containers.postgres())
    elif port_open("127.0.0.1", 5432):
        yield postgres.DEFAULT_DSN
    else:
        unavailable("no PostgreSQL: set EMM_TEST_POSTGRES_DSN or run one on 127.0.0.1:5432")


@pytest.fixture
def pg_dsn(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    with postgres.fresh_database(postgres_server) as dsn:
        yield dsn


@pytest.fixture(scope="session")
def amqp_server() -> Iterator[str]:
    """An AMQP URL; a private vhost is made for the session when rabbitmqctl can make one."""
    if os.environ.get("EMM_TEST_AMQP_URL"):
        yield os.environ["EMM_TEST_AMQP_URL"]
    elif containers.docker_answers():
        yield _SESSION.enter_context(containers.rabbitmq())
    elif port_open("127.0.0.1", 5672):
        try:
            url = _SESSION.enter_context(rabbitmq.private_vhost(rabbitmq.DEFAULT_URL))
        except rabbitmq.VhostUnavailable:
            url = f"{rabbitmq.DEFAULT_URL}/%2F"  # not root: the default vhost
        yield url
    else:
        unavailable("no RabbitMQ: set EMM_TEST_AMQP_URL or run one on 127.0.0.1:5672")


@pytest.fixture
def amqp_url(amqp_server: str) -> str:
    """The AMQP URL with the project's queues deleted, so each test starts empty."""
    queues = ("emm.jobs", *QUEUES, "emm.jobs.dead", "emm.readings.dead")
    rabbitmq.delete_queues(amqp_server, queues)
    return amqp_server


def _local_server(
    env: str,
    container: Callable[[], AbstractContextManager[str]],
    start: Callable[[Path], influx.Service],
    folder: Callable[[], Path],
    name: str,
) -> Iterator[str]:
    """The server in `env`, else a container, else one started from its binary in a folder."""
    if os.environ.get(env):
        yield os.environ[env].rstrip("/")
    elif containers.docker_answers():
        yield _SESSION.enter_context(container())
    else:
        try:
            service = start(folder())
        except (FileNotFoundError, RuntimeError) as exc:
            unavailable(f"no {name}: {exc}")
            return
        _SESSION.callback(service.stop)
        yield service.url


@pytest.fixture(scope="session")
def influx_v1_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of an InfluxDB 1.x server."""
    yield from _local_server(
        "EMM_TEST_INFLUX_V1_URL",
        containers.influxdb_v1,
        influx.start_influxdb_v1,
        lambda: tmp_path_factory.mktemp("influxdb"),
        "InfluxDB 1.x",
    )


@pytest.fixture(scope="session")
def influx_v2_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a server speaking InfluxDB's v2 write API and VictoriaMetrics' export API."""
    yield from _local_server(
        "EMM_TEST_INFLUX_V2_URL",
        containers.victoriametrics,
        influx.start_victoriametrics,
        lambda: tmp_path_factory.mktemp("victoria"),
        "VictoriaMetrics",
    )


@pytest.fixture
def influx_v1(influx_v1_server: str) -> Iterator[InfluxQL]:
    """A fresh database on the InfluxDB 1.x server, dropped afterwards."""
    db = InfluxQL(influx_v1_server, f"emm_test_{uuid.uuid4().hex[:12]}")
    db.create_database()
    try:
        yield db
    finally:
        db.drop_database()


@pytest.fixture
def victoria(influx_v2_server: str) -> VictoriaMetrics:
    """The VictoriaMetrics server (shared: tests keep their series apart by their tags)."""
    return VictoriaMetrics(influx_v2_server)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Child processes for one test, all stopped afterwards."""
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()
