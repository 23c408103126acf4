"""`emm read`: one read of a device through the worker's read path, printed as a table.

One simulator serves three SDM120s: unit 1 answers everything, unit 2 has a hole at currentL1
(exception 2), unit 3 never answers.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator

import psycopg2
import pytest

from devservices.net import free_port, port_open, wait_for
from devservices.processes import Processes, emm_command

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SCENARIO = """
[[faults]]
kind = "hole"
meters = [1]
function_code = 4
addresses = ["6-7"]

[[faults]]
kind = "timeout"
meters = [2]
"""
# A DSN where no PostgreSQL answers: `emm read` falls back to the shipped profile.
NO_POSTGRES = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"


@pytest.fixture(scope="module")
def sim_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    folder = tmp_path_factory.mktemp("read")
    (folder / "faults.toml").write_text(SCENARIO)
    processes = Processes(folder)
    port = free_port()
    try:
        processes.start(
            "simulator",
            ["simulator", "--profile", "sdm120", "--meters", "3", "--scenario", "faults.toml"],
            {"EMM_SIMULATOR_HOST": "127.0.0.1", "EMM_SIMULATOR_PORT": str(port)},
        )
        wait_for(lambda: port_open("127.0.0.1", port), 15)
        yield port
    finally:
        processes.stop_all()


def emm(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*emm_command(), *args],
        env={**os.environ, "EMM_POSTGRES_DSN": dsn},
        capture_output=True,
        text=True,
        timeout=30,
    )


def table(stdout: str) -> dict[str, list[str]]:
    """The rows of `emm read`'s table by name (the header under "name")."""
    return {line.split()[0]: line.split()[1:] for line in stdout.splitlines()}


def test_read_a_type_from_the_database_with_raw_registers(pg_dsn: str, sim_port: int) -> None:
    assert emm(pg_dsn, "migrate", "--no-profiles").returncode == 0
    with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            """INSERT INTO registers (type, register_address, measurement_name, data_unit,
                   data_type, function_code) VALUES ('mine', 70, 'hz', 'Hz', 3, 4),
                   ('mine', 72, 'energy', 'kWh', 3, 4)"""
        )
    conn.close()
    result = emm(pg_dsn, "read", "--host", f"127.0.0.1:{sim_port}", "--type", "mine", "--raw")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "register map: mine from PostgreSQL (2 rows)",
        "1 request(s), 2 of 2 values read",
    ]
    rows = table(result.stdout)
    assert rows["name"] == ["value", "unit", "fc", "address", "raw"]
    value, unit, fc, address, *raw = rows["hz"]
    assert (unit, fc, address) == ("Hz", "4", "70")
    assert 45 < float(value) < 55
    assert len(raw) == 2 and all(re.fullmatch("[0-9A-F]{4}", w) for w in raw)
    # every digit, no exponent: the shortest text that reads back as the same float
    energy = rows["energy"][0]
    assert "e" not in energy and repr(float(energy)) == energy


def test_read_prefers_the_database_rows_and_says_so(pg_dsn: str, sim_port: int) -> None:
    assert emm(pg_dsn, "migrate").returncode == 0
    with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM registers WHERE type = 'sdm120' AND register_address > 0")
    conn.close()
    result = emm(pg_dsn, "read", "--host", "127.0.0.1", "--port", str(sim_port), "--type", "sdm120")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[0] == "register map: sdm120 from PostgreSQL (1 rows)"
    assert list(table(result.stdout)) == ["name", "voltageL1"]


def test_read_splits_at_a_hole_as_the_worker_does(sim_port: int) -> None:
    result = emm(
        NO_POSTGRES, "read", "--host", f"127.0.0.1:{sim_port}", "--unit", "2", "--type", "sdm120"
    )
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0].startswith(
        "register map: sdm120 from the shipped profile profiles/sdm120.toml (PostgreSQL not used:"
    )
    assert "crosses a hole; split into" in result.stderr
    assert re.search(
        r"request\(s\), 21 of 22 values read; first error \(modbus_exception_2\)", lines[-1]
    )
    rows = table(result.stdout)
    assert rows["currentL1"][:2] == ["error", "A"]
    assert float(rows["voltageL1"][0]) > 200


def test_read_an_unreachable_device_is_one_line(sim_port: int) -> None:
    port = free_port()
    started = time.monotonic()
    result = emm(
        NO_POSTGRES, "read", "--host", "127.0.0.1", "--port", str(port), "--type", "sdm120"
    )
    assert time.monotonic() - started < 10
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines()[1:] == [
        f"emm read: cannot connect to 127.0.0.1:{port}: Connection refused"
    ]


def test_read_a_device_that_never_answers_is_one_line(sim_port: int) -> None:
    started = time.monotonic()
    result = emm(
        NO_POSTGRES,
        "read",
        "--host",
        f"127.0.0.1:{sim_port}",
        "--unit",
        "3",
        "--type",
        "sdm120",
        "--timeout",
        "0.3",
    )
    assert time.monotonic() - started < 15
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines()[1:] == [
        f"emm read: 127.0.0.1:{sim_port} unit 3: FC4 read of 38 at 0: no answer within 0.3 s "
        "(3 tries)"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "70000"], "argument --port: must be from 1 to 65535, got 70000"),
        (["--unit", "300"], "argument --unit: must be from 0 to 255, got 300"),
        (["--unit", "-1"], "argument --unit: must be from 0 to 255, got -1"),
        (["--timeout", "0"], "argument --timeout: must be a number of seconds above 0, got '0'"),
    ],
)
def test_read_arguments_are_range_checked(args: list[str], message: str) -> None:
    result = emm(NO_POSTGRES, "read", "--host", "127.0.0.1", "--type", "sdm120", *args)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == f"emm read: error: {message}"


def test_read_an_unknown_type_says_so(pg_dsn: str) -> None:
    assert emm(pg_dsn, "migrate", "--no-profiles").returncode == 0
    result = emm(pg_dsn, "read", "--host", "127.0.0.1", "--type", "nope")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "emm read: type 'nope' is neither a shipped profile nor in the registers table"
    )
