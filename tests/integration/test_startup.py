"""Start-up as a user meets it: each command run for real against real services, its one line
and its exit status checked exactly.

What cannot mend itself (a refused login, a missing vhost, database or schema, the other
InfluxDB API) is one line and status 78; an unreachable service is one line when the outage
starts and one when it ends (a closed port on 127.0.0.1 that a forwarder later opens).
"""

from __future__ import annotations

import os
import re
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from devservices.net import Forwarder, free_port
from devservices.processes import Processes, emm_command
from devservices.readers import InfluxQL
from emm.settings import SimulatorSettings, WriterSettings
from writer.influx import check

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SINCE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def emm(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`emm ARGS` run to its end, with no EMM_* variable but those in `env`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("EMM_")}
    return subprocess.run(
        [*emm_command(), *args],
        env={**base, "EMM_LOG_FORMAT": "text", **env},
        capture_output=True,
        text=True,
        timeout=40,
    )


@pytest.fixture
def forwarders() -> Iterator[list[Forwarder]]:
    made: list[Forwarder] = []
    yield made
    for f in made:
        f.close()


def _with(url: str, **parts: object) -> str:
    split = urllib.parse.urlsplit(url)
    user = parts.get("user", split.username)
    password = parts.get("password", split.password)
    host = parts.get("host", split.hostname)
    port = parts.get("port", split.port or 5672)
    path = parts.get("path", split.path)
    return f"{split.scheme}://{user}:{password}@{host}:{port}{path}"


def _vhost(amqp_url: str) -> str:
    path = urllib.parse.urlsplit(amqp_url).path
    return urllib.parse.unquote(path[1:]) if len(path) > 1 else "/"


# --- RabbitMQ ---------------------------------------------------------------------------------


def test_rabbitmq_refusing_the_login_is_one_line_and_78(amqp_server: str) -> None:
    result = emm({"EMM_AMQP_URL": _with(amqp_server, password="wrong")}, "worker")
    assert (result.returncode, result.stdout) == (78, "")
    assert result.stderr.splitlines() == [
        f"emm worker: RabbitMQ at 127.0.0.1:5672 refused the login (user 'guest', vhost "
        f"{_vhost(amqp_server)!r}): check the user name and password in EMM_AMQP_URL"
    ]
    assert "wrong" not in result.stderr


def test_a_missing_vhost_is_one_line_and_78(amqp_server: str) -> None:
    result = emm({"EMM_AMQP_URL": _with(amqp_server, path="/emm-no-such-vhost")}, "scheduler")
    assert (result.returncode, result.stdout) == (78, "")
    assert result.stderr.splitlines() == [
        "emm scheduler: RabbitMQ at 127.0.0.1:5672 cannot open vhost 'emm-no-such-vhost' for "
        "user 'guest': the vhost does not exist or the user has no permission on it "
        "(rabbitmqctl list_vhosts; the path of EMM_AMQP_URL names the vhost, %2F for '/')"
    ]


def test_unreachable_rabbitmq_is_a_line_when_it_starts_and_one_when_it_ends(
    amqp_server: str, tmp_path: Path, forwarders: list[Forwarder]
) -> None:
    forwarder = Forwarder(("127.0.0.1", 5672))
    forwarders.append(forwarder)
    url = _with(amqp_server, port=forwarder.port)
    procs = Processes(tmp_path)
    try:
        procs.start("worker", ["worker"], {"EMM_AMQP_URL": url, "EMM_LOG_FORMAT": "text"})
        where = f"RabbitMQ at 127.0.0.1:{forwarder.port}"
        procs.wait_log(
            "worker", rf"{where} not reachable since {SINCE}: connection refused; retrying\n", 20
        )
        forwarder.open()
        back = procs.wait_log("worker", rf"{where} back after (\d+) s\n", 30)
        assert int(back.group(1)) <= 20
        log = procs.log("worker")
        assert log.count("not reachable") == 1
        assert log.count("back after") == 1
        assert "Traceback" not in log
    finally:
        assert procs.stop("worker") == 0


# --- InfluxDB ---------------------------------------------------------------------------------


def _version(url: str) -> str:
    with urllib.request.urlopen(f"{url}/ping", timeout=5) as response:
        return str(response.headers["X-Influxdb-Version"])


def test_the_v2_api_against_influxdb_1_says_which_api_to_set(
    influx_v1_server: str, amqp_server: str
) -> None:
    env = {"EMM_INFLUX_URL": influx_v1_server, "EMM_AMQP_URL": amqp_server}
    result = emm(env, "writer")
    assert (result.returncode, result.stdout) == (78, "")
    assert result.stderr.splitlines() == [
        f"emm writer: InfluxDB {_version(influx_v1_server)} at {influx_v1_server} has no v2 "
        "API: set EMM_INFLUX_API=v1"
    ]


def test_a_missing_database_is_one_line_and_78(influx_v1_server: str, amqp_server: str) -> None:
    env = {
        "EMM_INFLUX_URL": influx_v1_server,
        "EMM_INFLUX_API": "v1",
        "EMM_INFLUX_BUCKET": "emm_no_such_database",
        "EMM_AMQP_URL": amqp_server,
    }
    result = emm(env, "writer")
    assert (result.returncode, result.stdout) == (78, "")
    assert result.stderr.splitlines() == [
        f"emm writer: InfluxDB {_version(influx_v1_server)} at {influx_v1_server} has no "
        "database 'emm_no_such_database': create it (CREATE DATABASE \"emm_no_such_database\") "
        "or set EMM_INFLUX_BUCKET"
    ]


def test_unreachable_influxdb_is_a_line_when_it_starts_and_one_when_it_ends(
    influx_v1: InfluxQL, amqp_server: str, tmp_path: Path, forwarders: list[Forwarder]
) -> None:
    target = urllib.parse.urlsplit(influx_v1.url)
    forwarder = Forwarder((target.hostname or "127.0.0.1", target.port or 8086))
    forwarders.append(forwarder)
    url = f"http://127.0.0.1:{forwarder.port}"
    env = {
        "EMM_INFLUX_URL": url,
        "EMM_INFLUX_API": "v1",
        "EMM_INFLUX_BUCKET": influx_v1.database,
        "EMM_AMQP_URL": amqp_server,
        "EMM_LOG_FORMAT": "text",
    }
    procs = Processes(tmp_path)
    try:
        procs.start("writer", ["writer"], env)
        where = f"InfluxDB at {re.escape(url)}"
        procs.wait_log(
            "writer", rf"{where} not reachable since {SINCE}: connection refused; retrying\n", 20
        )
        forwarder.open()
        procs.wait_log("writer", rf"{where} back after \d+ s\n", 30)
        version = re.escape(_version(influx_v1.url))
        procs.wait_log(
            "writer",
            rf"writing to InfluxDB {version} at {re.escape(url)}, database "
            rf"'{influx_v1.database}'\n",
            10,
        )
        log = procs.log("writer")
        assert (log.count("not reachable"), log.count("back after")) == (1, 1)
    finally:
        assert procs.stop("writer") == 0


def test_victoriametrics_answers_ping_without_a_version_and_is_not_judged(
    influx_v2_server: str,
) -> None:
    settings = WriterSettings(influx_url=influx_v2_server, influx_bucket="any")
    assert check(settings) == (
        f"{influx_v2_server} (no X-Influxdb-Version header: not InfluxDB, bucket not checked)"
    )


# --- PostgreSQL -------------------------------------------------------------------------------


def test_a_database_without_the_schema_says_run_emm_migrate(pg_dsn: str, amqp_server: str) -> None:
    database = urllib.parse.urlsplit(pg_dsn).path[1:]
    expected = (
        f"PostgreSQL database {database!r} at 127.0.0.1:5432 as user 'postgres' has no schema "
        '(relation "energy_meters" does not exist): run `emm migrate`'
    )
    env = {"EMM_POSTGRES_DSN": pg_dsn, "EMM_AMQP_URL": amqp_server}
    result = emm(env, "scheduler")
    assert result.returncode == 78
    assert result.stderr.splitlines()[-1] == f"emm scheduler: {expected}"
    assert "Traceback" not in result.stderr

    result = emm({"EMM_POSTGRES_DSN": pg_dsn}, "check")
    assert (result.returncode, result.stdout) == (78, "")
    assert result.stderr.splitlines() == [f"emm check: {expected}"]


def test_migrate_seeds_the_meter_where_the_simulator_listens_by_default(
    pg_dsn: str, tmp_path: Path
) -> None:
    assert emm({"EMM_POSTGRES_DSN": pg_dsn}, "migrate", "--no-profiles").returncode == 0
    with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT host, port, slave_address, type FROM energy_meters")
        (host, port, unit, type_), *others = cur.fetchall()
    conn.close()
    assert (host, port, others) == ("127.0.0.1", 5020, [])
    assert (SimulatorSettings().host, SimulatorSettings().port) == (host, port)

    # The simulator listens on loopback by default (another port here: 5020 may be taken),
    # and the seeded meter's type and unit answer there.
    procs = Processes(tmp_path)
    sim_port = free_port()
    try:
        procs.start("simulator", ["simulator"], {"EMM_SIMULATOR_PORT": str(sim_port)})
        procs.wait_log("simulator", rf"simulator listening on 127\.0\.0\.1:{sim_port}:", 20)
        env = {"EMM_POSTGRES_DSN": pg_dsn}
        read = emm(
            env, "read", "--host", f"127.0.0.1:{sim_port}", "--unit", str(unit), "--type", type_
        )
        assert read.returncode == 0, read.stderr
    finally:
        assert procs.stop("simulator") == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--meters", "x"], "argument --meters: must be a whole number at least 1, got 'x'"),
        (
            ["--port", "70000"],
            "argument --port: must be a whole number from 0 to 65535, got '70000'",
        ),
        (
            ["--exception", "x"],
            "argument --exception: CODE must be a whole number from 1 to 255, got 'x'",
        ),
        (["--reboot", "5:x"], "argument --reboot: FOR must be a number at least 0, got 'x'"),
    ],
)
def test_simulator_flag_errors_name_the_flag(args: list[str], message: str) -> None:
    result = emm({}, "simulator", *args)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines()[-1] == f"emm simulator: error: {message}"
