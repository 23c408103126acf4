"""`emm check` on a real database: every problem one line naming its row, status 78; nothing
to say, status 0. And the scheduler's view of the same problems: logged once per change."""

from __future__ import annotations

import logging
import os
import subprocess
import urllib.parse

import psycopg2
import pytest

from devservices.processes import emm_command
from scheduler.repo import ConfigRepo

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

PROBLEMS = """
INSERT INTO energy_meters (id, host, port, slave_address, type, description) VALUES
    (101, '127.0.0.1', 5020, 1, 'sdm630', 'not loaded'),
    (102, '127.0.0.1', 5021, 1, 'mystery', 'unknown type');
INSERT INTO meter_types (type) VALUES ('empty_type');
INSERT INTO registers (id, type, register_address, measurement_name, data_unit, data_type,
                       function_code)
    VALUES (901, 'virtual_modbustcp', 7, 'test_measurement', 'V', 1, 3);
"""

BUSY_GATEWAY = """
INSERT INTO gateways (host, port, pause_between_requests_ms) VALUES ('10.0.0.7', 502, 1000);
INSERT INTO energy_meters (host, port, slave_address, type, description)
    SELECT '10.0.0.7', 502, unit, 'virtual_modbustcp', 'm' || unit FROM generate_series(1, 50) unit;
"""


def emm(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMM_")}
    return subprocess.run(
        [*emm_command(), *args],
        env={**env, "EMM_POSTGRES_DSN": dsn},
        capture_output=True,
        text=True,
        timeout=40,
    )


def sql(dsn: str, statements: str) -> None:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(statements)
    conn.close()


def test_check_prints_every_problem_naming_its_row(pg_dsn: str) -> None:
    assert emm(pg_dsn, "migrate", "--no-profiles").returncode == 0
    where = f"database {urllib.parse.urlsplit(pg_dsn).path[1:]!r} at 127.0.0.1:5432 as user "
    clean = emm(pg_dsn, "check")
    assert (clean.returncode, clean.stdout) == (0, "")
    assert clean.stderr == (
        f"no problems in 1 enabled meter(s), 0 type(s), 0 gateway row(s) in {where}'postgres'\n"
    )

    sql(pg_dsn, PROBLEMS + BUSY_GATEWAY)
    result = emm(pg_dsn, "check")
    assert result.returncode == 78
    assert result.stdout.splitlines() == [
        "energy_meters row id=101: type 'sdm630' is a shipped profile not loaded into "
        "PostgreSQL: run `emm profiles import sdm630`",
        "registers row id=901 (type 'virtual_modbustcp') skipped: measurement_name "
        "'test_measurement' appears twice for this type",
        "energy_meters row id=102 skipped: type 'mystery' has no usable registers",
        "meter_types row 'empty_type': no rows in registers",
        "gateways row 10.0.0.7:502: over budget: its pauses alone take 83% of each tick (more "
        "than 80%): 50 meter(s), 50 requests a tick, pause_between_requests_ms=1000, "
        "max_connections=1; spread its meters, shorten the pause or read less often",
    ]
    assert result.stderr == (
        f"5 problem(s) in 53 enabled meter(s), 1 type(s), 1 gateway row(s) in {where}'postgres'\n"
    )


def test_the_scheduler_logs_each_problem_once_per_change(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert emm(pg_dsn, "migrate", "--no-profiles").returncode == 0
    sql(pg_dsn, PROBLEMS)
    repo = ConfigRepo(pg_dsn)
    caplog.set_level(logging.INFO, logger="scheduler.repo")
    try:
        for _ in range(3):
            repo.load()
        first = [r.getMessage() for r in caplog.records]
        assert len(first) == 3  # meters 101 and 102, register 901; once each over three loads
        assert all(m.startswith("configuration: ") for m in first)
        caplog.clear()

        sql(
            pg_dsn, "DELETE FROM registers WHERE id = 901; DELETE FROM energy_meters WHERE id = 102"
        )
        repo.load()
        repo.load()
        assert [r.getMessage() for r in caplog.records] == [
            "configuration: 2 problem(s) no longer found; 1 left"
        ]
    finally:
        repo.close()
