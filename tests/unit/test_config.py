"""emm.config.build_config: validating loaded rows; a bad row is skipped with an error naming it."""

from __future__ import annotations

import time
from typing import Any

import pytest

from emm.config import build_config, register_from_row
from emm.limits import MAX_REGISTERS_PER_TYPE
from emm.messages import Gateway, Meter
from emm.planner import ReadLimits
from emm.registers import DataType, Order, Register

pytestmark = pytest.mark.timeout(30)

KNOWN = (
    "(known: 1 int16, 2 int32, 3 float32, 4 uint16, 5 uint32, 6 int64, 7 uint64, 8 float64, "
    "9 bool, 10 string, 11 uint8_high, 12 uint8_low, 13 int8_high, 14 int8_low)"
)


def meter(id: int, type: str = "sdm", **changes: Any) -> tuple[str, dict[str, Any]]:
    data = {
        "id": id,
        "host": "10.0.0.1",
        "port": 502,
        "unit_id": 1,
        "type": type,
        "description": None,
    }
    data.update(changes)
    return ("meter", data)


def register(
    id: int, address: int, name: str, type: str = "sdm", **changes: Any
) -> tuple[str, dict[str, Any]]:
    # shaped like the load query's json_build_object for a registers row
    data = {
        "id": id,
        "type": type,
        "address": address,
        "name": name,
        "unit": None,
        "data_type": 3,
        "function_code": 4,
        "byte_order": 2,
        "word_order": 2,
        "scale": 1.0,
        "offset": 0.0,
        "missing": None,
    }
    data.update(changes)
    return ("register", data)


def meter_type(
    type: str,
    max_registers: int | None = 125,
    max_bits: int | None = 2000,
    max_gap: int | None = 50,
) -> tuple[str, dict[str, Any]]:
    return (
        "type",
        {"type": type, "max_registers": max_registers, "max_bits": max_bits, "max_gap": max_gap},
    )


def test_good_rows_load() -> None:
    config = build_config(
        [
            register(11, 2, "b", unit="V"),
            meter(1, description="hall"),
            register(10, 0, "a"),
            meter(2, host="10.0.0.2", port=1502, unit_id=0),
        ]
    )
    assert config.errors == []
    registers = (
        Register("a", 0, 4, DataType.FLOAT32),
        Register("b", 2, 4, DataType.FLOAT32, unit="V"),
    )
    assert [(m.meter, m.registers, m.limits) for m in config.meters] == [
        (Meter(1, "10.0.0.1", 502, 1, "sdm", "hall"), registers, ReadLimits()),
        (Meter(2, "10.0.0.2", 1502, 0, "sdm"), registers, ReadLimits()),
    ]


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (
            register(12, 4, "bad", data_type=9),
            "registers row id=12 (type 'sdm', 'bad') skipped: data_type bool does not fit "
            "function_code 4: bool goes with 1/2, numbers with 3/4",
        ),
        (
            register(12, 4, "bad", data_type=42),
            f"registers row id=12 (type 'sdm', 'bad') skipped: unknown data_type 42 {KNOWN}",
        ),
        (
            register(12, 4, "bad", function_code=6),
            "registers row id=12 (type 'sdm', 'bad') skipped: function_code 6 is not a read "
            "function code (1, 2, 3, 4)",
        ),
        (
            register(12, 65535, "bad"),
            "registers row id=12 (type 'sdm', 'bad') skipped: register_address 65535 is outside "
            "0..65535 for a float32",
        ),
        (
            register(12, 4, "bad", byte_order=3),
            "registers row id=12 (type 'sdm', 'bad') skipped: byte_order must be 1 (little) or "
            "2 (big), got 3",
        ),
        (
            register(12, 4, "bad", scale=0.0),
            "registers row id=12 (type 'sdm', 'bad') skipped: scale 0.0 must be a finite number "
            "other than 0",
        ),
        (
            register(12, 4, "bad", missing="0xZZ"),
            "registers row id=12 (type 'sdm', 'bad') skipped: missing value '0xZZ' is not an "
            "integer such as 0xFFFF",
        ),
        (
            register(12, 4, "bad name"),
            "registers row id=12 (type 'sdm', 'bad name') skipped: measurement_name 'bad name' "
            "must start with a letter or _ and use only letters, digits, _ . - (at most 100 "
            "characters)",
        ),
        (
            register(12, 4, "a"),
            "registers row id=12 (type 'sdm') skipped: measurement_name 'a' appears twice for "
            "this type",
        ),
    ],
)
def test_bad_register_row_is_skipped(bad: tuple[str, dict[str, Any]], error: str) -> None:
    config = build_config([meter(1), register(10, 0, "a"), bad, register(11, 6, "c")])
    assert config.errors == [error]
    assert [m.meter.id for m in config.meters] == [1]
    assert [r.name for r in config.meters[0].registers] == ["a", "c"]


def test_duplicate_name_keeps_the_lower_address() -> None:
    config = build_config([meter(1), register(5, 8, "v"), register(6, 2, "v")])
    assert config.errors == [
        "registers row id=5 (type 'sdm') skipped: measurement_name 'v' appears twice for this type"
    ]
    assert config.meters[0].registers == (Register("v", 2, 4, DataType.FLOAT32),)


def test_same_name_on_two_types_is_fine() -> None:
    config = build_config(
        [meter(1), meter(2, "other"), register(5, 0, "v"), register(6, 0, "v", type="other")]
    )
    assert config.errors == []
    assert [(m.meter.id, [r.name for r in m.registers]) for m in config.meters] == [
        (1, ["v"]),
        (2, ["v"]),
    ]


@pytest.mark.parametrize(
    ("rows", "error"),
    [
        (
            [meter(3, "empty")],
            "energy_meters row id=3 skipped: type 'empty' has no usable registers",
        ),
        (
            [meter(3, "broken"), register(20, 0, "x", type="broken", data_type=0)],
            "energy_meters row id=3 skipped: type 'broken' has no usable registers",
        ),
        (
            [meter(3, port=70000)],
            "energy_meters row id=3 skipped: meter 3: port 70000 is outside 1..65535",
        ),
        ([meter(3, port=0)], "energy_meters row id=3 skipped: meter 3: port 0 is outside 1..65535"),
        (
            [meter(3, unit_id=256)],
            "energy_meters row id=3 skipped: meter 3: unit id 256 is outside 0..255",
        ),
        ([meter(3, host="")], "energy_meters row id=3 skipped: meter 3: host is empty"),
        (
            [meter(3, host="10.0.0.9\n2026-01-01 INFO forged")],
            "energy_meters row id=3 skipped: host contains whitespace or a control character",
        ),
        (
            [meter(3, description="ends\\")],
            "energy_meters row id=3 skipped: description has a backslash at the end or before a "
            "backslash, comma, equals sign or space (line protocol cannot carry it exactly)",
        ),
        (
            [meter(3, description="x" * 70_000)],
            "energy_meters row id=3 skipped: description is 70000 characters long, at most 256 "
            "are allowed",
        ),
        (
            [meter(3, "sdm\x1b")],
            "energy_meters row id=3 skipped: type contains the control character '\\x1b'",
        ),
        (
            [meter(3, read_cron="*/7 * *")],
            "energy_meters row id=3 skipped: read_cron='*/7 * *': has 3 fields; expected 5 "
            "(minute hour day month weekday) or 6 (a leading seconds field)",
        ),
        (
            [meter(3, read_cron="0 0 31 2 *")],
            "energy_meters row id=3 skipped: read_cron='0 0 31 2 *': never fires (no tick "
            "within 5 years)",
        ),
        (
            [meter(3, port=None)],
            "energy_meters row id=3 skipped: int() argument must be a "
            "string, a bytes-like object or a real number, not 'NoneType'",
        ),
    ],
)
def test_bad_meter_is_skipped(rows: list[tuple[str, dict[str, Any]]], error: str) -> None:
    config = build_config([meter(1), register(10, 0, "a"), *rows])
    assert error in config.errors
    assert [m.meter.id for m in config.meters] == [1]


def test_meter_types_limits_applied() -> None:
    config = build_config(
        [
            meter(1),
            meter(2, "plain"),
            meter(3, "nulls"),
            register(10, 0, "a"),
            register(11, 0, "a", type="plain"),
            register(12, 0, "a", type="nulls"),
            meter_type("sdm", 40, 100, 8),
            meter_type("nulls", None, None, None),  # NULL columns fall back to the defaults
            meter_type("unused", 10, 10, 0),
        ]
    )
    assert config.errors == []
    assert {m.meter.type: m.limits for m in config.meters} == {
        "sdm": ReadLimits(max_registers=40, max_bits=100, max_gap=8),
        "plain": ReadLimits(),
        "nulls": ReadLimits(max_registers=125, max_bits=2000, max_gap=50),
    }


def test_max_gap_zero_is_kept() -> None:
    config = build_config([meter(1), register(10, 0, "a"), meter_type("sdm", 60, 2000, 0)])
    assert config.meters[0].limits == ReadLimits(max_registers=60, max_gap=0)


@pytest.mark.parametrize(
    ("row", "error"),
    [
        (
            meter_type("sdm", 126),
            "meter_types row 'sdm' ignored: max_read_registers 126 is outside 1..125",
        ),
        (
            meter_type("sdm", max_bits=2001),
            "meter_types row 'sdm' ignored: max_read_bits 2001 is outside 1..2000",
        ),
        (
            meter_type("sdm", max_gap=-1),
            "meter_types row 'sdm' ignored: max_gap_registers -1 must be 0 or more",
        ),
    ],
)
def test_bad_meter_type_falls_back_to_defaults(row: tuple[str, dict[str, Any]], error: str) -> None:
    config = build_config([meter(1), register(10, 0, "a"), row])
    assert config.errors == [error]
    assert config.meters[0].limits == ReadLimits()


def test_meters_come_out_sorted_by_id() -> None:
    config = build_config([meter(9), meter(2), meter(5), register(1, 0, "a")])
    assert [m.meter.id for m in config.meters] == [2, 5, 9]


def test_registers_come_out_sorted_by_address() -> None:
    config = build_config(
        [meter(1), register(1, 40, "z"), register(2, 0, "y"), register(3, 20, "x")]
    )
    assert [r.name for r in config.meters[0].registers] == ["y", "x", "z"]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, Register("v", 4, 4, DataType.FLOAT32)),
        ({"byte_order": 2, "word_order": 1}, Register("v", 4, 4, DataType.FLOAT32, Order.CDAB)),
        ({"byte_order": 1, "word_order": 2}, Register("v", 4, 4, DataType.FLOAT32, Order.BADC)),
        ({"byte_order": 1, "word_order": 1}, Register("v", 4, 4, DataType.FLOAT32, Order.DCBA)),
        # rows of the original schema: NULL orders mean big endian, NULL scale means 1
        (
            {"byte_order": None, "word_order": None, "scale": None, "offset": None},
            Register("v", 4, 4, DataType.FLOAT32),
        ),
        (
            {"data_type": 1, "function_code": 3, "scale": 0.1, "offset": -40.0, "unit": "°C"},
            Register("v", 4, 3, DataType.INT16, unit="°C", scale=0.1, offset=-40.0),
        ),
        (
            {"data_type": 4, "missing": ""},
            Register("v", 4, 4, DataType.UINT16, missing=frozenset()),
        ),
        (
            {"data_type": 5, "missing": "0xFFFFFFFF,0"},
            Register("v", 4, 4, DataType.UINT32, missing=frozenset({0xFFFFFFFF, 0})),
        ),
        ({"data_type": 9, "function_code": 2}, Register("v", 4, 2, DataType.BOOL)),
    ],
)
def test_register_from_row(changes: dict[str, Any], expected: Register) -> None:
    _, data = register(1, 4, "v", **changes)
    assert register_from_row(data) == expected


def test_a_backslash_in_a_description_is_kept() -> None:
    config = build_config([meter(1, description="C:\\meters\\hall A"), register(10, 0, "a")])
    assert config.errors == []
    assert config.meters[0].meter.description == "C:\\meters\\hall A"


def test_a_reserved_register_name_is_skipped_with_its_row() -> None:
    config = build_config([meter(1), register(10, 0, "a"), register(11, 2, "time")])
    assert config.errors == [
        "registers row id=11 (type 'sdm', 'time') skipped: measurement_name 'time' is reserved "
        "(InfluxDB tags and time: description, meter_id, time, type)"
    ]
    assert [r.name for r in config.meters[0].registers] == ["a"]


def test_ten_thousand_registers_load_in_linear_time_and_the_type_is_capped() -> None:
    rows = [meter(1), *(register(i, 2 * i, f"r{i}") for i in range(10_000))]
    started = time.perf_counter()
    config = build_config(rows)
    took_s = time.perf_counter() - started
    # The former duplicate check compared each row with every kept one: 2.8 s for these rows.
    assert took_s < 2.5  # linear: about 0.2 s here; a busy CI machine gets room
    assert len(config.meters[0].registers) == MAX_REGISTERS_PER_TYPE
    assert config.meters[0].registers[-1].name == f"r{MAX_REGISTERS_PER_TYPE - 1}"
    assert config.errors == [
        f"registers rows id={MAX_REGISTERS_PER_TYPE} and {10_000 - MAX_REGISTERS_PER_TYPE - 1} "
        "more (type 'sdm') skipped: a type may have at most 2000 registers (the first by address "
        "are kept)"
    ]


def gateway(host: str = "10.0.0.1", port: int = 502, **settings: Any) -> tuple[str, dict[str, Any]]:
    # shaped like the load query's json_build_object for a gateways row
    data: dict[str, Any] = {
        "host": host,
        "port": port,
        "max_connections": 1,
        "pause_between_requests_ms": 0,
        "pause_after_connect_ms": 0,
        "request_timeout_ms": None,
        "max_read_registers": None,
        "framing": "tcp",
    }
    data.update(settings)
    return ("gateway", data)


def test_gateways_settings_reach_their_meters_and_lower_the_read_limit() -> None:
    config = build_config(
        [
            meter(1),
            meter(2, port=503),
            meter(3, host="10.0.0.2"),
            register(1, 0, "v"),
            meter_type("sdm", max_registers=80),
            gateway(max_read_registers=40, pause_between_requests_ms=20),
            gateway(port=503, max_read_registers=100, framing="rtu-over-tcp"),
        ]
    )
    assert config.errors == []
    by_id = {mc.meter.id: mc for mc in config.meters}
    assert by_id[1].gateway == Gateway(max_read_registers=40, pause_between_requests_ms=20)
    assert by_id[1].limits.max_registers == 40
    # a gateway's limit above the type's does not raise it
    assert by_id[2].gateway.framing == "rtu-over-tcp"
    assert by_id[2].limits.max_registers == 80
    assert by_id[3].gateway == Gateway()
    assert by_id[3].limits.max_registers == 80


def test_a_bad_gateway_row_is_reported_and_its_meters_get_the_defaults() -> None:
    config = build_config([meter(1), register(1, 0, "v"), gateway(max_connections=0)])
    assert config.errors == [
        "gateways row 10.0.0.1:502 ignored (its meters get the defaults): "
        "max_connections 0 is outside 1..16"
    ]
    assert [mc.gateway for mc in config.meters] == [Gateway()]


def test_a_meter_may_carry_its_own_cron_parsed_once_per_load() -> None:
    config = build_config(
        [
            register(10, 0, "a"),
            meter(1),
            meter(2, read_cron="*/5 * * * * *"),
            meter(3, read_cron="*/5  * * * * *"),
            meter(4, read_cron="bad"),
            meter(5, read_cron="bad"),
        ]
    )
    crons = {mc.meter.id: mc.read_cron for mc in config.meters}
    assert crons[1] is None
    assert crons[2] is not None and crons[2].expression == "*/5 * * * * *"
    assert crons[3] is not crons[2] and crons[3] is not None  # spelled otherwise: parsed again
    assert sorted(crons) == [1, 2, 3]
    assert [e for e in config.errors if "read_cron='bad'" in e] == [
        f"energy_meters row id={i} skipped: read_cron='bad': has 1 fields; expected 5 "
        "(minute hour day month weekday) or 6 (a leading seconds field)"
        for i in (4, 5)
    ]


def test_poll_every_comes_from_the_row() -> None:
    config = build_config([meter(1), register(10, 0, "a"), register(11, 2, "serial", poll_every=0)])
    assert [(r.name, r.poll_every) for r in config.meters[0].registers] == [
        ("a", 1),
        ("serial", 0),
    ]


def test_plausibility_limits_of_a_type_and_a_meters_own() -> None:
    type_row = meter_type("sdm", 125, 2000, 50)
    type_row[1].update(max_power_w=20_000.0, voltage_max_v=260.0)
    config = build_config(
        [
            meter(1),
            meter(2, max_power_w=5_000.0, voltage_min_v=None),
            meter(3, frequency_min_hz=80.0),
            register(10, 0, "a"),
            type_row,
        ]
    )
    limits = {mc.meter.id: mc.plausibility for mc in config.meters}
    assert (limits[1].max_power_w, limits[1].voltage_max_v) == (20_000.0, 260.0)
    assert (limits[2].max_power_w, limits[2].voltage_max_v) == (5_000.0, 260.0)
    assert limits[3] == limits[1]  # a bad override: the type's limits
    assert config.errors == [
        "energy_meters row id=3: plausibility limits ignored (its type's apply): frequency "
        "range must lie within 40..70 Hz"
    ]
