"""`emm profiles list | show | import`: what comes from where, and no silent replacement of the
rows meters read."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psycopg2
import pytest

from devservices.net import free_port
from devservices.processes import emm_command

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

NO_POSTGRES = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"

ONE_ROW = """
type = "sdm120"
name = "Eastron SDM120 Modbus"
max_read_registers = 80

[[registers]]
name = "voltageL1"
address = 0
function_code = 4
data_type = "float32"
unit = "V"
"""


def emm(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*emm_command(), *args],
        env={**os.environ, "EMM_POSTGRES_DSN": dsn},
        capture_output=True,
        text=True,
        timeout=30,
    )


def execute(dsn: str, sql: str) -> None:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql)
    conn.close()


def rows_of(dsn: str, type_: str) -> int:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM registers WHERE type = %s", (type_,))
        (count,) = cur.fetchone()
    conn.close()
    return int(count)


def test_list_says_where_each_type_comes_from(pg_dsn: str) -> None:
    assert emm(pg_dsn, "migrate").returncode == 0
    execute(
        pg_dsn,
        """INSERT INTO registers (type, register_address, measurement_name, data_type,
               function_code) VALUES ('my_meter', 0, 'volts', 3, 4)""",
    )
    result = emm(pg_dsn, "profiles", "list")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1:3] for line in result.stdout.splitlines()}
    assert rows["type"] == ["from", "registers"]
    assert rows["sdm630"] == ["both", "85"]
    assert rows["my_meter"] == ["database", "1"]
    assert rows["virtual_modbustcp"] == ["database", "1"]

    offline = emm(NO_POSTGRES, "profiles", "list")
    assert offline.returncode == 0
    assert "listing the shipped profiles only" in offline.stderr
    assert {line.split()[1] for line in offline.stdout.splitlines()[1:]} == {"shipped"}


def test_show_prefers_the_database_rows(pg_dsn: str) -> None:
    assert emm(pg_dsn, "migrate").returncode == 0
    execute(pg_dsn, "UPDATE registers SET data_unit = 'kV' WHERE measurement_name = 'voltageL1'")
    result = emm(pg_dsn, "profiles", "show", "sdm120")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["name", "address", "fc", "type", "order", "unit", "scale", "source"]
    assert lines[1].split()[:7] == ["voltageL1", "0", "4", "float32", "ABCD", "kV", "1"]
    assert len(lines) == 23
    assert result.stderr.splitlines()[0] == "sdm120 from PostgreSQL (22 rows)"

    shipped = emm(NO_POSTGRES, "profiles", "show", "sdm120")
    assert shipped.returncode == 0
    assert shipped.stdout.splitlines()[1].split()[5] == "V"
    assert shipped.stderr.startswith("sdm120 from the shipped profile profiles/sdm120.toml")

    unknown = emm(pg_dsn, "profiles", "show", "nope")
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == (
        "emm profiles: type 'nope' is neither a shipped profile nor in the registers table"
    )


def test_import_refuses_to_replace_rows_meters_use(pg_dsn: str, tmp_path: Path) -> None:
    assert emm(pg_dsn, "migrate").returncode == 0
    execute(
        pg_dsn,
        """INSERT INTO energy_meters (host, port, slave_address, type)
           VALUES ('10.0.0.1', 502, 1, 'sdm120'), ('10.0.0.2', 502, 1, 'sdm120')""",
    )
    (tmp_path / "sdm120.toml").write_text(ONE_ROW)
    path = str(tmp_path / "sdm120.toml")

    dry = emm(pg_dsn, "profiles", "import", path, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert lines[0] == (
        f"type 'sdm120' from {path}: rows 0 added, 21 removed, 1 changed; 2 meter(s) use the type"
    )
    assert "  - currentL1" in lines
    assert "  ~ voltageL1: source" in lines  # the file cites no datasheet
    assert "  ~ max_gap_registers 16 -> 50" in lines
    assert lines[-1] == "dry run: nothing written"
    assert rows_of(pg_dsn, "sdm120") == 22

    refused = emm(pg_dsn, "profiles", "import", path)
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert refused.stderr.splitlines() == [
        "emm profiles: type 'sdm120' is used by 2 meter(s): refusing to replace its 22 rows "
        "(0 added, 21 removed, 1 changed); see the change with --dry-run, replace with --force"
    ]
    assert rows_of(pg_dsn, "sdm120") == 22

    forced = emm(pg_dsn, "profiles", "import", path, "--force")
    assert forced.returncode == 0, forced.stderr
    assert rows_of(pg_dsn, "sdm120") == 1

    # a shipped profile by its type puts the shipped rows back
    back = emm(pg_dsn, "profiles", "import", "sdm120", "--dry-run")
    assert back.stdout.splitlines()[0].startswith(
        "type 'sdm120' from profiles/sdm120.toml: rows 21 added, 0 removed, 1 changed"
    )
    assert emm(pg_dsn, "profiles", "import", "sdm120", "--force").returncode == 0
    assert rows_of(pg_dsn, "sdm120") == 22
    same = emm(pg_dsn, "profiles", "import", "sdm120")
    assert same.returncode == 0
    assert same.stdout.strip() == "type 'sdm120' is up to date (22 rows): nothing to do"


def test_import_of_a_type_no_meter_uses_and_bad_names(pg_dsn: str, tmp_path: Path) -> None:
    assert emm(pg_dsn, "migrate", "--no-profiles").returncode == 0
    assert emm(pg_dsn, "profiles", "import", "sdm630").returncode == 0
    assert rows_of(pg_dsn, "sdm630") == 85

    unknown = emm(pg_dsn, "profiles", "import", "sdm999")
    assert unknown.returncode == 2
    assert "'sdm999' is neither a profile file nor a shipped profile" in unknown.stderr

    (tmp_path / "typo.toml").write_text(ONE_ROW.replace("max_read_registers", "max_read_register"))
    typo = emm(pg_dsn, "profiles", "import", str(tmp_path / "typo.toml"))
    assert typo.returncode == 2
    assert typo.stderr.strip() == (
        f"emm profiles: {tmp_path / 'typo.toml'}: unknown top-level key(s) max_read_register"
    )
