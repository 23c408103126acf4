"""`emm read`: one read of a device through the planner and codec, printed as a table."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from devservices.net import free_port, port_open, wait_for
from devservices.processes import Processes, emm_command
from simulator.model import expected

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

STEP_S = 60


@pytest.fixture
def sim_port(processes: Processes) -> int:
    port = free_port()
    processes.start(
        "simulator",
        ["simulator"],
        {
            "EMM_SIMULATOR_HOST": "127.0.0.1",
            "EMM_SIMULATOR_PORT": str(port),
            "EMM_SIMULATOR_STEP_S": str(STEP_S),
        },
    )
    wait_for(lambda: port_open("127.0.0.1", port), 15)
    return port


def emm(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*emm_command(), *args],
        env={**os.environ, "EMM_POSTGRES_DSN": dsn},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_read_a_type_from_the_database_with_raw_registers(pg_dsn: str, sim_port: int) -> None:
    assert emm(pg_dsn, "migrate", "--no-profiles").returncode == 0
    before = time.time()
    result = emm(
        pg_dsn,
        "read",
        "--host",
        "127.0.0.1",
        "--port",
        str(sim_port),
        "--unit",
        "0",
        "--type",
        "virtual_modbustcp",
        "--raw",
    )
    after = time.time()
    assert result.returncode == 0, result.stderr
    candidates = {expected(0, int(t * 1000), STEP_S)["test_measurement"] for t in (before, after)}
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["name", "value", "unit", "raw"]
    name, value, unit, raw = lines[1].split()
    assert (name, unit) == ("test_measurement", "test_u")
    assert float(value) in candidates
    assert raw == f"{int(float(value)):04X}"
    assert result.stderr.strip() == "1 request(s), 1 of 1 values read"


def test_read_reports_an_unreachable_device(pg_dsn: str) -> None:
    port = free_port()
    result = emm(
        pg_dsn,
        "read",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--unit",
        "1",
        "--type",
        "sdm120",
        "--timeout",
        "0.5",
    )
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["name", "value", "unit"]
    assert lines[1].split()[:2] == ["voltageL1", "error"]
    assert f"cannot connect to 127.0.0.1:{port}" in lines[1]
    assert result.stderr.strip() == "4 request(s), 0 of 22 values read"


def test_read_an_unknown_type_says_so(pg_dsn: str) -> None:
    assert emm(pg_dsn, "migrate", "--no-profiles").returncode == 0
    result = emm(pg_dsn, "read", "--host", "127.0.0.1", "--type", "nope")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "emm read: type 'nope' is neither a shipped profile nor in the registers table"
    )
