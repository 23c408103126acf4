"""`emm migrate` against a real PostgreSQL: schema, seed, constraints, upgrades, profiles."""

from __future__ import annotations

import logging
import os
import subprocess

import psycopg2
import psycopg2.errors
import psycopg2.extras
import pytest

from devservices.processes import emm_command
from emm.messages import Gateway, Job
from emm.profiles import shipped_profile
from emm.registers import DataType, Order
from postgres.config import load_config
from postgres.connection import connect
from postgres.schema import MIGRATIONS, migrate
from scheduler.jobs import MeterTick, PlanBook, build_jobs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def run_emm(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*emm_command(), *args],
        env={**os.environ, "EMM_POSTGRES_DSN": dsn},
        capture_output=True,
        text=True,
        timeout=60,
    )


def snapshot(dsn: str) -> dict[str, object]:
    """Columns, constraints and every row of the project's tables."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            """SELECT table_name, column_name, data_type, column_default, is_nullable
               FROM information_schema.columns WHERE table_schema = 'public'
               ORDER BY table_name, column_name"""
        )
        columns = cur.fetchall()
        cur.execute(
            """SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
               FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2"""
        )
        constraints = cur.fetchall()
        rows = {}
        for table in ("energy_meters", "registers", "meter_types", "gateways"):
            cur.execute(f"SELECT * FROM {table} ORDER BY 1, 2")
            rows[table] = cur.fetchall()
        cur.execute("SELECT version, description FROM schema_migrations ORDER BY 1")
        rows["schema_migrations"] = cur.fetchall()
    conn.close()
    return {"columns": columns, "constraints": constraints, "rows": rows}


def test_migrate_creates_the_schema_seeds_the_virtual_meter_and_is_idempotent(pg_dsn: str) -> None:
    first = run_emm(pg_dsn, "migrate", "--seed-host", "simhost", "--seed-port", "1502")
    assert first.returncode == 0, first.stderr
    every = ", ".join(str(version) for version, _, _ in sorted(MIGRATIONS))
    assert first.stdout.splitlines()[0] == f"applied migration(s) {every}"
    before = snapshot(pg_dsn)

    second = run_emm(pg_dsn, "migrate", "--seed-host", "other", "--seed-port", "9")
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == ["schema is up to date"]
    assert snapshot(pg_dsn) == before

    with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT id, host, port, slave_address, type, description, enabled FROM energy_meters"
        )
        assert cur.fetchall() == [
            (1, "simhost", 1502, 0, "virtual_modbustcp", "test_energy_meter", True)
        ]
        cur.execute(
            """SELECT register_address, measurement_name, data_unit, data_type, function_code,
                      byte_order, word_order, scale, value_offset
               FROM registers WHERE type = 'virtual_modbustcp'"""
        )
        assert cur.fetchall() == [(0, "test_measurement", "test_u", 1, 3, 2, 2, 1.0, 0.0)]
    conn.close()


def test_no_seed_leaves_the_meters_table_empty(pg_dsn: str) -> None:
    result = run_emm(pg_dsn, "migrate", "--no-seed", "--no-profiles")
    assert result.returncode == 0, result.stderr
    with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM energy_meters")
        assert cur.fetchone() == (0,)
        cur.execute("SELECT count(*) FROM registers")
        assert cur.fetchone() == (0,)
    conn.close()


@pytest.mark.parametrize(
    ("sql", "constraint"),
    [
        (
            "INSERT INTO energy_meters (host, port, slave_address, type) VALUES ('h', 0, 1, 't')",
            "energy_meters_port_check",
        ),
        (
            "INSERT INTO energy_meters (host, port, slave_address, type) "
            "VALUES ('h', 65536, 1, 't')",
            "energy_meters_port_check",
        ),
        (
            "INSERT INTO energy_meters (host, port, slave_address, type) "
            "VALUES ('h', 502, 256, 't')",
            "energy_meters_slave_address_check",
        ),
        (
            "INSERT INTO energy_meters (host, port, slave_address, type) "
            "VALUES ('h', 502, -1, 't')",
            "energy_meters_slave_address_check",
        ),
        (
            "INSERT INTO registers (type, register_address, measurement_name, data_type, "
            "function_code) VALUES ('t', 0, 'x', 15, 3)",
            "registers_data_type_check",
        ),
        (
            "INSERT INTO registers (type, register_address, measurement_name, data_type, "
            "function_code) VALUES ('t', 0, 'x', 10, 3)",
            "registers_string_check",
        ),
        (
            "INSERT INTO registers (type, register_address, measurement_name, data_type, "
            "function_code, string_length) VALUES ('t', 0, 'x', 10, 3, 126)",
            "registers_string_length_check",
        ),
        (
            "INSERT INTO registers (type, register_address, measurement_name, data_type, "
            "function_code, value_names) VALUES ('t', 0, 'x', 4, 3, '[1]')",
            "registers_value_names_check",
        ),
        (
            "INSERT INTO registers (type, register_address, measurement_name, data_type, "
            "function_code, scale_register) VALUES ('t', 0, 'x', 4, 3, 'x')",
            "registers_scale_register_check",
        ),
        (
            "INSERT INTO registers (type, register_address, measurement_name, data_type, "
            "function_code) VALUES ('t', 0, 'x', 3, 6)",
            "registers_function_code_check",
        ),
        (
            "INSERT INTO registers (type, register_address, measurement_name, data_type, "
            "function_code) VALUES ('t', 70000, 'x', 3, 4)",
            "registers_register_address_check",
        ),
        (
            "INSERT INTO registers (type, register_address, measurement_name, data_type, "
            "function_code, byte_order) VALUES ('t', 0, 'x', 3, 4, 3)",
            "registers_byte_order_check",
        ),
        (
            "INSERT INTO registers (type, register_address, measurement_name, data_type, "
            "function_code, word_order) VALUES ('t', 0, 'x', 3, 4, 0)",
            "registers_word_order_check",
        ),
        *(
            (f"INSERT INTO gateways (host, port, {column}) VALUES ('h', 502, {value})", constraint)
            for column, value, constraint in (
                ("max_connections", "0", "gateways_max_connections_check"),
                ("max_connections", "17", "gateways_max_connections_check"),
                ("pause_between_requests_ms", "-1", "gateways_pause_between_requests_ms_check"),
                ("pause_after_connect_ms", "10001", "gateways_pause_after_connect_ms_check"),
                ("request_timeout_ms", "5", "gateways_request_timeout_ms_check"),
                ("max_read_registers", "126", "gateways_max_read_registers_check"),
                ("framing", "'rtu'", "gateways_framing_check"),
            )
        ),
        ("INSERT INTO gateways (host, port) VALUES ('h', 0)", "gateways_port_check"),
        ("INSERT INTO gateways (host) VALUES ('')", "gateways_host_check"),
        (
            "INSERT INTO registers (type, register_address, measurement_name, data_type, "
            "function_code, poll_every) VALUES ('t', 0, 'x', 3, 4, -1)",
            "registers_poll_every_check",
        ),
        (
            "INSERT INTO registers (type, register_address, measurement_name, data_type, "
            "function_code, poll_every) VALUES ('t', 0, 'x', 3, 4, 10001)",
            "registers_poll_every_check",
        ),
        (
            "INSERT INTO energy_meters (host, port, slave_address, type, read_cron) "
            "VALUES ('h', 502, 1, 't', '')",
            "energy_meters_read_cron_check",
        ),
        (
            "INSERT INTO energy_meters (host, port, slave_address, type, read_cron) "
            "VALUES ('h', 502, 1, 't', '  ')",
            "energy_meters_read_cron_check",
        ),
    ],
)
def test_impossible_rows_are_rejected_naming_the_column(
    pg_dsn: str, sql: str, constraint: str
) -> None:
    with connect(pg_dsn) as conn:
        migrate(conn)
    conn = psycopg2.connect(pg_dsn)
    try:
        with pytest.raises(psycopg2.errors.CheckViolation) as info, conn.cursor() as cur:
            cur.execute(sql)
        assert f'violates check constraint "{constraint}"' in str(info.value)
    finally:
        conn.close()


def test_an_original_project_database_is_upgraded_in_place(pg_dsn: str) -> None:
    with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            """CREATE TABLE energy_meters (host varchar, port int, slave_address int,
                                          type varchar, description varchar);
               CREATE TABLE registers (type varchar, register_address int,
                                       measurement_name varchar, data_unit varchar,
                                       data_type int, function_code int,
                                       byte_order int, word_order int);
               INSERT INTO energy_meters VALUES ('192.0.2.10', 502, 1, 'sdm630', 'old');
               INSERT INTO registers VALUES ('sdm630', 0, 'voltageL1', 'V', 3, 4, 2, 2),
                                            ('sdm630', 52, 'activePower', 'W', 3, 4, 1, 1);"""
        )
    conn.close()
    result = run_emm(pg_dsn, "migrate", "--seed-host", "127.0.0.1")
    assert result.returncode == 0, result.stderr
    # The user's sdm630 rows are kept as they are: the shipped profile is not forced over them.
    assert "sdm630" not in result.stdout

    with connect(pg_dsn) as conn:
        config = load_config(conn)
    assert config.errors == []
    meters = {mc.meter.description: mc for mc in config.meters}
    old = meters["old"]
    assert (old.meter.id, old.meter.host, old.meter.port, old.meter.unit_id) == (
        1,
        "192.0.2.10",
        502,
        1,
    )
    assert [(r.name, r.address, r.data_type, r.order) for r in old.registers] == [
        ("voltageL1", 0, DataType.FLOAT32, Order.ABCD),
        ("activePower", 52, DataType.FLOAT32, Order.DCBA),
    ]
    assert "test_energy_meter" in meters


def test_shipped_profiles_are_loaded_once_and_never_overwrite_edits(pg_dsn: str) -> None:
    first = run_emm(pg_dsn, "migrate", "--no-seed")
    assert first.returncode == 0, first.stderr
    profile = shipped_profile("sdm630")
    assert profile is not None
    with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM registers WHERE type = 'sdm630'")
        assert cur.fetchone() == (len(profile.rows),)
        cur.execute(
            "SELECT max_read_registers, max_gap_registers FROM meter_types WHERE type = 'sdm630'"
        )
        assert cur.fetchone() == (profile.limits.max_registers, profile.limits.max_gap)
        cur.execute(
            "UPDATE registers SET data_unit = 'volt' "
            "WHERE type = 'sdm630' AND measurement_name = 'voltageL1'"
        )
    conn.close()
    again = run_emm(pg_dsn, "migrate", "--no-seed")
    assert again.returncode == 0, again.stderr
    with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT data_unit FROM registers "
            "WHERE type = 'sdm630' AND measurement_name = 'voltageL1'"
        )
        assert cur.fetchone() == ("volt",)
    conn.close()


def test_profiles_import_replaces_the_type_and_rejects_a_bad_file(pg_dsn, tmp_path) -> None:
    assert run_emm(pg_dsn, "migrate", "--no-seed", "--no-profiles").returncode == 0
    good = tmp_path / "mine.toml"
    good.write_text(
        'type = "mine"\nname = "My meter"\nmax_read_registers = 40\n\n'
        '[[registers]]\nname = "voltageL1"\naddress = 0\nfunction_code = 4\n'
        'data_type = "float32"\nunit = "V"\nsource = "manual p. 3"\n'
    )
    result = run_emm(pg_dsn, "profiles", "import", str(good))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"imported 1 registers of type 'mine' from {good}"

    bad = tmp_path / "bad.toml"
    bad.write_text(
        'type = "mine"\n\n[[registers]]\nname = "a"\naddress = 0\nfunction_code = 4\n'
        'data_type = "float32"\n\n[[registers]]\nname = "b"\naddress = 2\n'
        'function_code = 4\ndata_type = "float128"\n'
    )
    result = run_emm(pg_dsn, "profiles", "import", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"emm profiles: {bad}: line 9: unknown data_type")
    with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT measurement_name, source FROM registers WHERE type = 'mine'")
        assert cur.fetchall() == [("voltageL1", "manual p. 3")]
    conn.close()


def test_gateway_rows_default_every_column_and_shape_their_meters_jobs(pg_dsn: str) -> None:
    assert run_emm(pg_dsn, "migrate", "--no-seed").returncode == 0
    with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO gateways (host) VALUES ('192.0.2.1') RETURNING *")
        assert cur.fetchone() == ("192.0.2.1", 502, 1, 0, 0, None, None, "tcp", None)
        cur.execute(
            """INSERT INTO gateways (host, port, max_connections, pause_between_requests_ms,
                                     pause_after_connect_ms, request_timeout_ms,
                                     max_read_registers, framing)
               VALUES ('192.0.2.2', 4196, 2, 50, 500, 2500, 40, 'rtu-over-tcp')"""
        )
        for host, port in (("192.0.2.1", 502), ("192.0.2.2", 4196), ("192.0.2.3", 502)):
            cur.execute(
                "INSERT INTO energy_meters (host, port, slave_address, type) "
                "VALUES (%s, %s, 1, 'sdm630')",
                (host, port),
            )
    conn.close()
    conn = psycopg2.connect(pg_dsn)
    try:
        with pytest.raises(psycopg2.errors.UniqueViolation) as info, conn.cursor() as cur:
            cur.execute("INSERT INTO gateways (host, port) VALUES ('192.0.2.1', 502)")
        assert 'violates unique constraint "gateways_pkey"' in str(info.value)
    finally:
        conn.close()
    with connect(pg_dsn) as conn:
        config = load_config(conn)
    assert config.errors == []
    by_host = {mc.meter.host: mc for mc in config.meters}
    # a row of defaults and no row at all are the same
    assert by_host["192.0.2.1"].gateway == by_host["192.0.2.3"].gateway == Gateway()
    assert by_host["192.0.2.2"].gateway == Gateway(
        max_connections=2,
        pause_between_requests_ms=50,
        pause_after_connect_ms=500,
        request_timeout_ms=2500,
        max_read_registers=40,
        framing="rtu-over-tcp",
    )
    # the gateway's max_read_registers lowers the sdm630's 80: one plan per (type, limit)
    assert by_host["192.0.2.3"].limits.max_registers == 80
    assert by_host["192.0.2.2"].limits.max_registers == 40
    due = [MeterTick(mc, 11_000, 0, True) for mc in config.meters]
    jobs = {job.meter.host: job for job in build_jobs(config.meters, due, 1_000, PlanBook())}
    assert jobs["192.0.2.1"].plan is jobs["192.0.2.3"].plan
    assert max(r.count for r in jobs["192.0.2.2"].plan.requests) <= 40
    assert len(jobs["192.0.2.2"].plan.requests) > len(jobs["192.0.2.3"].plan.requests)
    assert Job.decode(jobs["192.0.2.2"].encode()).gateway == by_host["192.0.2.2"].gateway
    assert b"gateway" not in jobs["192.0.2.1"].encode()


def test_the_configuration_loads_in_one_round_trip(pg_dsn: str) -> None:
    assert run_emm(pg_dsn, "migrate", "--seed-host", "127.0.0.1").returncode == 0
    with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
        for i in range(20):
            cur.execute(
                "INSERT INTO energy_meters (host, port, slave_address, type) "
                "VALUES ('127.0.0.1', 502, %s, 'sdm630')",
                (i + 1,),
            )
    conn.close()
    logger = logging.getLogger("emm.test.sql")
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    conn = psycopg2.connect(pg_dsn, connection_factory=psycopg2.extras.LoggingConnection)
    try:
        conn.initialize(logger)
        config = load_config(conn)
    finally:
        conn.close()
        logger.removeHandler(handler)
    assert len(records) == 1
    assert len(config.meters) == 21
    assert {len(mc.registers) for mc in config.meters if mc.meter.type == "sdm630"} == {85}


@pytest.mark.parametrize(
    ("statement", "constraint"),
    [
        (
            "INSERT INTO energy_meters (host, type) VALUES (E'10.0.0.1\\n2026 INFO forged', 't')",
            "energy_meters_host_text_check",
        ),
        (
            "INSERT INTO energy_meters (host, type) VALUES ('h', E't\\x1b')",
            "energy_meters_type_text_check",
        ),
        (
            "INSERT INTO energy_meters (host, type, description) VALUES ('h', 't', E'ends\\\\')",
            "energy_meters_description_text_check",
        ),
        (
            "INSERT INTO energy_meters (host, type, description) "
            "VALUES ('h', 't', repeat('x', 257))",
            "energy_meters_description_text_check",
        ),
        (
            "INSERT INTO registers (type, register_address, measurement_name, data_type, "
            "function_code) VALUES ('t', 0, 'time', 3, 4)",
            "registers_measurement_name_check",
        ),
        (
            "INSERT INTO registers (type, register_address, measurement_name, data_type, "
            "function_code) VALUES ('t', 0, E'power\\n', 3, 4)",
            "registers_measurement_name_check",
        ),
        (
            "INSERT INTO registers (type, register_address, measurement_name, data_type, "
            "function_code) VALUES (E'a\\nb', 0, 'v', 3, 4)",
            "registers_type_text_check",
        ),
        ("INSERT INTO meter_types (type) VALUES (repeat('t', 65))", "meter_types_type_text_check"),
    ],
)
def test_the_database_refuses_names_and_tags_that_cannot_be_stored(
    pg_dsn: str, statement: str, constraint: str
) -> None:
    with connect(pg_dsn) as conn:
        migrate(conn)
    conn = psycopg2.connect(pg_dsn)
    try:
        with conn.cursor() as cur, pytest.raises(psycopg2.errors.CheckViolation) as raised:
            cur.execute(statement)
        assert f'violates check constraint "{constraint}"' in str(raised.value)
    finally:
        conn.close()


def test_a_backslash_in_a_description_is_accepted_as_written(pg_dsn: str) -> None:
    with connect(pg_dsn) as conn:
        migrate(conn)
    with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO energy_meters (host, type, description) VALUES ('h', 'sdm630', %s)",
            ("C:\\meters\\hall A",),
        )
        cur.execute("SELECT description FROM energy_meters WHERE host = 'h'")
        assert cur.fetchall() == [("C:\\meters\\hall A",)]
    conn.close()


def test_poll_classes_and_meter_crons_come_to_an_existing_database(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a database of the first schema, with a meter and a register
    monkeypatch.setattr("postgres.schema.MIGRATIONS", [m for m in MIGRATIONS if m[0] == 1])
    with connect(pg_dsn) as conn:
        assert migrate(conn, seed_host="127.0.0.1") == [1]
    monkeypatch.undo()
    with connect(pg_dsn) as conn:
        assert 3 in migrate(conn)
        assert migrate(conn) == []
    with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT poll_every FROM registers")
        assert cur.fetchall() == [(1,)]
        cur.execute("SELECT read_cron FROM energy_meters")
        assert cur.fetchall() == [(None,)]
        cur.execute(
            """SELECT conname FROM pg_constraint
               WHERE conname IN ('registers_poll_every_check', 'energy_meters_read_cron_check')
               ORDER BY 1"""
        )
        assert cur.fetchall() == [
            ("energy_meters_read_cron_check",),
            ("registers_poll_every_check",),
        ]
        cur.execute(
            "INSERT INTO registers (type, register_address, measurement_name, data_type, "
            "function_code, poll_every) VALUES ('virtual_modbustcp', 9, 'serial', 5, 3, 0)"
        )
        cur.execute("UPDATE energy_meters SET read_cron = '*/5 * * * * *'")
        cur.execute(
            "INSERT INTO energy_meters (host, port, slave_address, type, read_cron) "
            "VALUES ('127.0.0.1', 502, 2, 'virtual_modbustcp', 'every minute')"
        )
    conn.close()
    with connect(pg_dsn) as conn:
        config = load_config(conn)
    (loaded,) = config.meters
    assert loaded.read_cron is not None and loaded.read_cron.expression == "*/5 * * * * *"
    assert [(r.name, r.poll_every) for r in loaded.registers] == [
        ("test_measurement", 1),
        ("serial", 0),
    ]
    assert config.errors == [
        "energy_meters row id=2 skipped: read_cron='every minute': has 2 fields; expected 5 "
        "(minute hour day month weekday) or 6 (a leading seconds field)"
    ]
