"""emm.registers: data types, byte/word orders, validation of a Register, sentinel parsing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emm.errors import ConfigError
from emm.registers import (
    DEFAULT_MISSING,
    MAX_POLL_EVERY,
    REGISTER_KEYS,
    DataType,
    Order,
    Register,
    parse_missing,
)

pytestmark = pytest.mark.timeout(30)

KNOWN = (
    "(known: 1 int16, 2 int32, 3 float32, 4 uint16, 5 uint32, 6 int64, 7 uint64, 8 float64, "
    "9 bool, 10 string, 11 uint8_high, 12 uint8_low, 13 int8_high, 14 int8_low)"
)


# --- DataType ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "member", "words", "struct_char"),
    [
        (1, DataType.INT16, 1, "h"),
        (2, DataType.INT32, 2, "i"),
        (3, DataType.FLOAT32, 2, "f"),
        (4, DataType.UINT16, 1, "H"),
        (5, DataType.UINT32, 2, "I"),
        (6, DataType.INT64, 4, "q"),
        (7, DataType.UINT64, 4, "Q"),
        (8, DataType.FLOAT64, 4, "d"),
        (9, DataType.BOOL, 1, ""),
    ],
)
def test_data_type_codes(code: int, member: DataType, words: int, struct_char: str) -> None:
    assert DataType.parse(code) is member
    assert DataType.parse(str(code)) is member
    assert DataType.parse(f" {code} ") is member
    assert DataType.parse(member.name.lower()) is member
    assert DataType.parse(member.name) is member
    assert DataType.parse(member) is member
    assert member.words == words
    assert member.struct_char == struct_char
    assert member.is_float == (member in (DataType.FLOAT32, DataType.FLOAT64))


@pytest.mark.parametrize(("code", "name"), [(1, "int16"), (2, "int32"), (3, "float32")])
def test_original_codes_keep_their_meaning(code: int, name: str) -> None:
    # the original project stored 1 = int, 2 = long, 3 = float in registers.data_type
    assert DataType(code).name.lower() == name


@pytest.mark.parametrize("value", [0, 15, "0", "-1", "int8", "", "float", None, 3.5])
def test_data_type_unknown(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        DataType.parse(value)
    assert str(info.value) == f"unknown data_type {value!r} {KNOWN}"


# --- Order -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("byte_order", "word_order", "order"),
    [(2, 2, Order.ABCD), (2, 1, Order.CDAB), (1, 2, Order.BADC), (1, 1, Order.DCBA)],
)
def test_order_from_codes(byte_order: int, word_order: int, order: Order) -> None:
    assert Order.from_codes(byte_order, word_order) is order
    assert (order.byte_order, order.word_order) == (byte_order, word_order)


@pytest.mark.parametrize(
    ("byte_order", "word_order", "message"),
    [
        (0, 2, "byte_order must be 1 (little) or 2 (big), got 0"),
        (3, 1, "byte_order must be 1 (little) or 2 (big), got 3"),
        (2, 0, "word_order must be 1 (little) or 2 (big), got 0"),
        (1, None, "word_order must be 1 (little) or 2 (big), got None"),
        (5, 5, "byte_order must be 1 (little) or 2 (big), got 5"),
    ],
)
def test_order_from_bad_codes(byte_order: int, word_order: int, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Order.from_codes(byte_order, word_order)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("text", "order"),
    [("ABCD", Order.ABCD), (" cdab ", Order.CDAB), ("badc", Order.BADC), ("DcBa", Order.DCBA)],
)
def test_order_parse(text: str, order: Order) -> None:
    assert Order.parse(text) is order


def test_order_parse_unknown() -> None:
    with pytest.raises(ConfigError) as info:
        Order.parse("ACBD")
    assert str(info.value) == "unknown order 'ACBD' (known: ABCD, CDAB, BADC, DCBA)"


# --- Register validation -----------------------------------------------------------------------

RESERVED = "is reserved (InfluxDB tags and time: description, meter_id, time, type)"
NAME_RULE = (
    "must start with a letter or _ and use only letters, digits, _ . - (at most 100 characters)"
)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"function_code": 5}, "function_code 5 is not a read function code (1, 2, 3, 4)"),
        ({"function_code": 6}, "function_code 6 is not a read function code (1, 2, 3, 4)"),
        ({"function_code": 0}, "function_code 0 is not a read function code (1, 2, 3, 4)"),
        (
            {"function_code": 3, "data_type": DataType.BOOL},
            "data_type bool does not fit function_code 3: bool goes with 1/2, numbers with 3/4",
        ),
        (
            {"function_code": 2, "data_type": DataType.INT16},
            "data_type int16 does not fit function_code 2: bool goes with 1/2, numbers with 3/4",
        ),
        (
            {"address": 65535, "data_type": DataType.FLOAT32},
            "register_address 65535 is outside 0..65535 for a float32",
        ),
        (
            {"address": 65533, "data_type": DataType.FLOAT64},
            "register_address 65533 is outside 0..65535 for a float64",
        ),
        ({"address": -1}, "register_address -1 is outside 0..65535 for a float32"),
        ({"address": "7"}, "register_address '7' is outside 0..65535 for a float32"),
        ({"scale": 0}, "scale 0 must be a finite number other than 0"),
        ({"scale": 0.0}, "scale 0.0 must be a finite number other than 0"),
        ({"scale": float("inf")}, "scale inf must be a finite number other than 0"),
        ({"scale": float("nan")}, "scale nan must be a finite number other than 0"),
        ({"offset": float("-inf")}, "offset -inf must be a finite number"),
        ({"name": "1st"}, f"measurement_name '1st' {NAME_RULE}"),
        ({"name": "active power"}, f"measurement_name 'active power' {NAME_RULE}"),
        ({"name": ""}, f"measurement_name '' {NAME_RULE}"),
        ({"name": "a" * 101}, f"measurement_name '{'a' * 101}' {NAME_RULE}"),
        ({"name": "p,q"}, f"measurement_name 'p,q' {NAME_RULE}"),
        # `$` would match before a final newline: the whole name must match
        ({"name": "power\n"}, f"measurement_name 'power\\n' {NAME_RULE}"),
        ({"name": "type"}, f"measurement_name 'type' {RESERVED}"),
        ({"name": "meter_id"}, f"measurement_name 'meter_id' {RESERVED}"),
        ({"name": "description"}, f"measurement_name 'description' {RESERVED}"),
        ({"name": "Time"}, f"measurement_name 'Time' {RESERVED}"),
        ({"name": None}, f"measurement_name None {NAME_RULE}"),
        ({"data_type": "int128"}, f"unknown data_type 'int128' {KNOWN}"),
        ({"order": "AB"}, "unknown order 'AB' (known: ABCD, CDAB, BADC, DCBA)"),
    ],
)
def test_register_validation(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"name": "v", "address": 0, "function_code": 3}
    fields.update(kwargs)
    with pytest.raises(ConfigError) as info:
        Register(**fields)  # type: ignore[arg-type]
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("kwargs", "end"),
    [
        ({"address": 65535, "data_type": DataType.INT16}, 65536),
        ({"address": 65534, "data_type": DataType.FLOAT32}, 65536),
        ({"address": 65532, "data_type": DataType.UINT64}, 65536),
        ({"address": 0, "function_code": 1, "data_type": DataType.BOOL}, 1),
        ({"address": 9, "function_code": 2, "data_type": "bool"}, 10),
        ({"name": "_x.y-z9", "address": 3, "data_type": "3"}, 5),
        ({"name": "a" * 100, "address": 0}, 2),
    ],
)
def test_register_valid_edges(kwargs: dict[str, object], end: int) -> None:
    fields: dict[str, object] = {"name": "v", "function_code": 3}
    fields.update(kwargs)
    assert Register(**fields).end == end  # type: ignore[arg-type]


def test_register_normalises_type_and_order() -> None:
    register = Register("v", 0, 4, "float32", "cdab")  # type: ignore[arg-type]
    assert register.data_type is DataType.FLOAT32
    assert register.order is Order.CDAB


@pytest.mark.parametrize(
    ("data_type", "missing", "sentinels"),
    [
        (DataType.INT16, None, frozenset({-32768})),
        (DataType.UINT16, None, frozenset({65535})),
        (DataType.INT32, None, frozenset({-(2**31), 2**31 - 1})),
        (DataType.UINT32, None, frozenset({2**32 - 1})),
        (DataType.INT64, None, frozenset({-(2**63)})),
        (DataType.UINT64, None, frozenset({2**64 - 1})),
        (DataType.FLOAT32, None, frozenset()),
        (DataType.INT16, frozenset({0xFFFF, 0x7FFF}), frozenset({-1, 32767})),
        (DataType.INT16, frozenset(), frozenset()),
        (DataType.FLOAT32, frozenset({0x3FC00000, 0x7FC00000}), frozenset({1.5})),  # NaN dropped
    ],
)
def test_sentinels_are_decoded_patterns(
    data_type: DataType, missing: frozenset[int] | None, sentinels: frozenset[float]
) -> None:
    assert Register("v", 0, 3, data_type, missing=missing).sentinels == sentinels


def test_default_missing_covers_every_type() -> None:
    assert set(DEFAULT_MISSING) == set(DataType)


# --- parse_missing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "data_type", "expected"),
    [
        (None, DataType.INT16, None),
        ("", DataType.INT16, frozenset()),
        (" , ", DataType.INT16, frozenset()),
        ("0xFFFF", DataType.UINT16, frozenset({0xFFFF})),
        ("0xFFFF, 0x8000", DataType.INT16, frozenset({0xFFFF, 0x8000})),
        ("0xFFFF;0x8000;", DataType.INT16, frozenset({0xFFFF, 0x8000})),
        ("65535", DataType.UINT16, frozenset({0xFFFF})),
        ("0b1,0o7", DataType.UINT16, frozenset({1, 7})),
        ("0xFFFFFFFF", DataType.UINT32, frozenset({0xFFFFFFFF})),
        ("0xFFFFFFFFFFFFFFFF", DataType.FLOAT64, frozenset({2**64 - 1})),
    ],
)
def test_parse_missing(
    text: str | None, data_type: DataType, expected: frozenset[int] | None
) -> None:
    assert parse_missing(text, data_type) == expected


@pytest.mark.parametrize(
    ("text", "data_type", "message"),
    [
        ("0x10000", DataType.UINT16, "missing value 0x10000 does not fit a uint16 (0..0xffff)"),
        ("-1", DataType.INT16, "missing value -1 does not fit a int16 (0..0xffff)"),
        (
            "0x100000000",
            DataType.INT32,
            "missing value 0x100000000 does not fit a int32 (0..0xffffffff)",
        ),
        ("FFFF", DataType.UINT16, "missing value 'FFFF' is not an integer such as 0xFFFF"),
        ("0xFFFF, nan", DataType.UINT16, "missing value 'nan' is not an integer such as 0xFFFF"),
    ],
)
def test_parse_missing_errors(text: str, data_type: DataType, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_missing(text, data_type)
    assert str(info.value) == message


# --- from_mapping / to_row / from_row ---------------------------------------------------------


@st.composite
def registers(draw: st.DrawFn) -> Register:
    data_type = draw(st.sampled_from(list(DataType)))
    fc = draw(st.sampled_from([1, 2] if data_type is DataType.BOOL else [3, 4]))
    bits = data_type.bits
    length = draw(st.integers(1, 125)) if data_type is DataType.STRING else 0
    integer = not data_type.is_float and data_type not in (DataType.BOOL, DataType.STRING)
    names = st.dictionaries(st.integers(0, bits - 1), st.sampled_from(["OFF", "ON", "FAULT"]))
    enum = draw(names) if integer and draw(st.booleans()) else {}
    bit_names = draw(names) if integer and not enum and draw(st.booleans()) else {}
    numeric = data_type not in (DataType.BOOL, DataType.STRING) and not (enum or bit_names)
    scale_register = draw(st.sampled_from(["", "W_SF"])) if numeric else ""
    return Register(
        name=draw(st.from_regex(r"[A-Za-z_][A-Za-z0-9_.\-]{0,20}", fullmatch=True)),
        address=draw(st.integers(0, 65536 - (length or data_type.words))),
        function_code=fc,
        data_type=data_type,
        order=draw(st.sampled_from(list(Order))),
        unit=draw(st.sampled_from(["", "V", "kWh", "°C"])),
        scale=draw(st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: x != 0)),
        offset=draw(st.floats(allow_nan=False, allow_infinity=False)),
        missing=draw(st.none() | st.frozensets(st.integers(0, (1 << bits) - 1), max_size=3)),
        poll_every=draw(st.integers(0, MAX_POLL_EVERY)),
        length=length,
        enum=tuple(sorted(enum.items())),
        bits=tuple(sorted(bit_names.items())),
        scale_register=scale_register,
    )


@settings(max_examples=200, deadline=None)
@given(registers())
def test_register_row_round_trip(register: Register) -> None:
    assert Register.from_row(register.to_row()) == register


@settings(max_examples=200, deadline=None)
@given(registers())
def test_register_mapping_round_trip(register: Register) -> None:
    data = {
        "name": register.name,
        "address": register.address,
        "function_code": register.function_code,
        "data_type": register.data_type.name.lower(),
        "order": register.order.value,
        "unit": register.unit,
        "scale": register.scale,
        "offset": register.offset,
        "missing": None if register.missing is None else sorted(register.missing),
        "poll_every": register.poll_every,
        "length": register.length,
        "enum": dict(register.enum),
        "bits": {str(bit): name for bit, name in register.bits},
        "scale_register": register.scale_register,
    }
    assert set(data) == set(REGISTER_KEYS)
    assert Register.from_mapping(data) == register


def test_to_row_leaves_out_trailing_defaults() -> None:
    assert Register("v", 4, 3, DataType.FLOAT32).to_row() == ["v", 4, 3]
    assert Register("v", 4, 3, DataType.INT16).to_row() == ["v", 4, 3, "", "int16"]
    assert Register(
        "p", 0, 4, DataType.UINT16, Order.BADC, "W", 0.5, 1.0, frozenset({9, 1})
    ).to_row() == ["p", 0, 4, "W", "uint16", "BADC", 0.5, 1.0, [1, 9]]
    # a poll class other than every tick is the one column a row written before it lacks
    assert Register("s", 0, 3, DataType.UINT32, poll_every=0).to_row() == [
        "s",
        0,
        3,
        "",
        "uint32",
        "ABCD",
        1.0,
        0.0,
        None,
        0,
    ]
    assert Register.from_row(["v", 4, 3]).poll_every == 1


@pytest.mark.parametrize(
    ("value", "expected"), [(None, 1), (1, 1), (0, 0), (15, 15), (MAX_POLL_EVERY, MAX_POLL_EVERY)]
)
def test_poll_every_defaults_to_every_tick(value: int | None, expected: int) -> None:
    data = {"name": "v", "address": 0, "function_code": 4, "poll_every": value}
    assert Register.from_mapping(data).poll_every == expected


@pytest.mark.parametrize("value", [-1, MAX_POLL_EVERY + 1, 2.0, "2", True])
def test_poll_every_must_be_a_whole_number_of_ticks(value: object) -> None:
    data = {"name": "v", "address": 0, "function_code": 4, "poll_every": value}
    with pytest.raises(ConfigError) as info:
        Register.from_mapping(data)
    assert str(info.value) == (
        f"poll_every {value!r} must be a whole number of ticks, 0..{MAX_POLL_EVERY} "
        "(0: once, then daily)"
    )


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # only name, address and function_code are required
        ({"name": "v", "address": 4, "function_code": 3}, Register("v", 4, 3)),
        # absent and null mean the same: the default
        (
            {
                "name": "v",
                "address": 4,
                "function_code": 3,
                "order": None,
                "unit": None,
                "scale": None,
                "offset": None,
                "missing": None,
            },
            Register("v", 4, 3),
        ),
        # a data type by code, code text or name; missing as text or list; keys not read
        (
            {
                "name": "t",
                "address": 0,
                "function_code": 4,
                "data_type": "1",
                "order": "badc",
                "unit": "°C",
                "scale": 0.1,
                "offset": -40,
                "missing": "0x8000, 0x7FFF",
                "source": "datasheet table 3",
                "id": 12,
            },
            Register(
                "t", 0, 4, DataType.INT16, Order.BADC, "°C", 0.1, -40.0, frozenset({0x8000, 0x7FFF})
            ),
        ),
        (
            {
                "name": "t",
                "address": 0,
                "function_code": 4,
                "data_type": 4,
                "missing": ["0xFFFF", 0],
            },
            Register("t", 0, 4, DataType.UINT16, missing=frozenset({0xFFFF, 0})),
        ),
        (
            {"name": "t", "address": 0, "function_code": 4, "data_type": "uint16", "missing": []},
            Register("t", 0, 4, DataType.UINT16, missing=frozenset()),
        ),
    ],
)
def test_from_mapping(data: dict[str, object], expected: Register) -> None:
    assert Register.from_mapping(data) == expected


GOOD = {"name": "v", "address": 0, "function_code": 3, "data_type": "int16"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"address": 0, "function_code": 3}, "register is missing the key 'name'"),
        ({"name": "v", "function_code": 3}, "register is missing the key 'address'"),
        ({"name": "v", "address": 0}, "register is missing the key 'function_code'"),
        (dict(GOOD, scale="x"), "could not convert string to float: 'x'"),
        (dict(GOOD, offset=[1]), "float() argument must be a string or a real number, not 'list'"),
        (
            dict(GOOD, missing=5),
            'missing must be a list or a text such as "0xFFFF, 0x8000", got int',
        ),
        (dict(GOOD, missing=["0x10000"]), "missing value 0x10000 does not fit a int16 (0..0xffff)"),
        (
            dict(GOOD, data_type="bool"),
            "data_type bool does not fit function_code 3: bool goes with 1/2, numbers with 3/4",
        ),
        (dict(GOOD, order="ABDC"), "unknown order 'ABDC' (known: ABCD, CDAB, BADC, DCBA)"),
        ("v", "register must be a mapping, got str"),
        (None, "register must be a mapping, got NoneType"),
        ([1, 2], "register must be a mapping, got list"),
    ],
)
def test_from_mapping_errors(data: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Register.from_mapping(data)  # type: ignore[arg-type]
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"name": "v"}, "register row must be a list, got dict"),
        (
            ["v", 0],
            "register row has 2 values, expected 3 to 14: name, address, function_code, unit, "
            "data_type, order, scale, offset, missing, poll_every, length, enum, bits, "
            "scale_register",
        ),
        (["v", 0, 5], "function_code 5 is not a read function code (1, 2, 3, 4)"),
    ],
)
def test_from_row_errors(row: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Register.from_row(row)  # type: ignore[arg-type]
    assert str(info.value) == message
