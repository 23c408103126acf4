"""emm.codec: words <-> values for every type and order, sentinels, scaling and bulk decoding.

The reference for every order is Python's `struct` applied directly (big-endian words, then the
words reversed and/or the bytes of each word swapped), never the codec itself.
"""

from __future__ import annotations

import math
import re
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emm.codec import RequestDecoder, decode, encode, encode_raw, words_to_bytes
from emm.errors import DecodeError
from emm.registers import DEFAULT_MISSING, DataType, Order, Register

pytestmark = pytest.mark.timeout(60)

FAST = settings(max_examples=200, deadline=None)
NUMERIC = [t for t in DataType if t not in (DataType.BOOL, DataType.STRING) and not t.is_half]
ORDERS = list(Order)
FC = {DataType.BOOL: 1}


def reg(
    data_type: DataType = DataType.FLOAT32,
    order: Order = Order.ABCD,
    address: int = 0,
    name: str = "v",
    **kwargs: object,
) -> Register:
    return Register(name, address, FC.get(data_type, 3), data_type, order, **kwargs)


def _swap16(word: int) -> int:
    return ((word & 0xFF) << 8) | (word >> 8)


def reference_words(raw: float | int, data_type: DataType, order: Order) -> list[int]:
    """The words a device sends for `raw`, computed with `struct` alone."""
    data = struct.pack(">" + data_type.struct_char, raw)
    big = list(struct.unpack(f">{len(data) // 2}H", data))
    if order is Order.ABCD:
        return big
    if order is Order.CDAB:
        return big[::-1]
    if order is Order.BADC:
        return [_swap16(w) for w in big]
    return [_swap16(w) for w in big[::-1]]  # DCBA: every byte reversed


def unsigned_pattern(raw: float | int, data_type: DataType) -> int:
    data = struct.pack(">" + data_type.struct_char, raw)
    return int.from_bytes(data, "big")


def raw_values(data_type: DataType) -> st.SearchStrategy[float | int]:
    """Any finite value of the type, as it is before scaling."""
    if data_type is DataType.FLOAT32:
        return st.floats(width=32, allow_nan=False, allow_infinity=False)
    if data_type is DataType.FLOAT64:
        return st.floats(allow_nan=False, allow_infinity=False)
    bits = 16 * data_type.words
    if data_type.struct_char.isupper():
        return st.integers(0, (1 << bits) - 1)
    return st.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1)


def same_float(a: float, b: float) -> bool:
    """Bit-exact equality (so 0.0 and -0.0 differ)."""
    return struct.pack(">d", a) == struct.pack(">d", b)


@st.composite
def typed_raw(draw: st.DrawFn) -> tuple[DataType, Order, float | int]:
    data_type = draw(st.sampled_from(NUMERIC))
    order = draw(st.sampled_from(ORDERS))
    return data_type, order, draw(raw_values(data_type))


# --- round trips against struct ------------------------------------------------------------


@FAST
@given(typed_raw())
def test_encode_raw_matches_struct_reference(case: tuple[DataType, Order, float | int]) -> None:
    data_type, order, raw = case
    assert encode_raw(raw, reg(data_type, order)) == reference_words(raw, data_type, order)


@FAST
@given(typed_raw())
def test_request_decoder_inverts_reference_words(case: tuple[DataType, Order, float | int]) -> None:
    data_type, order, raw = case
    register = reg(data_type, order, address=7, missing=frozenset())
    decoder = RequestDecoder.build(7, data_type.words, (register,))
    values, missing = decoder.decode(reference_words(raw, data_type, order))
    assert missing == []
    assert list(values) == ["v"]
    assert same_float(values["v"], float(raw))


@FAST
@given(typed_raw())
def test_default_sentinels_go_to_missing(case: tuple[DataType, Order, float | int]) -> None:
    data_type, order, raw = case
    register = reg(data_type, order)
    words = encode_raw(raw, register)
    is_sentinel = unsigned_pattern(raw, data_type) in DEFAULT_MISSING[data_type]
    assert decode(words, register) == (None if is_sentinel else float(raw))


@FAST
@given(
    st.sampled_from([DataType.INT16, DataType.UINT16, DataType.INT32, DataType.UINT32]),
    st.sampled_from(ORDERS),
    st.integers(-(1 << 31), (1 << 32) - 1),
    st.sampled_from([0.1, 0.01, 0.001, 10.0, 0.5]),
    st.sampled_from([0.0, -5.0, 273.15]),
)
def test_encode_scaled_value_gives_raw_words(
    data_type: DataType, order: Order, raw: int, scale: float, offset: float
) -> None:
    bits = 16 * data_type.words
    low, high = (
        (0, (1 << bits) - 1)
        if data_type.struct_char.isupper()
        else (
            -(1 << (bits - 1)),
            (1 << (bits - 1)) - 1,
        )
    )
    raw = min(max(raw, low), high)
    register = reg(data_type, order, scale=scale, offset=offset, missing=frozenset())
    value = raw * scale + offset
    assert encode(value, register) == reference_words(raw, data_type, order)
    assert decode(encode(value, register), register) == value


# --- known vectors ---------------------------------------------------------------------------


VECTORS = [
    # (type, order, value, words)
    (DataType.FLOAT32, Order.ABCD, 1.5, [0x3FC0, 0x0000]),
    (DataType.FLOAT32, Order.CDAB, 1.5, [0x0000, 0x3FC0]),
    (DataType.FLOAT32, Order.BADC, 1.5, [0xC03F, 0x0000]),
    (DataType.FLOAT32, Order.DCBA, 1.5, [0x0000, 0xC03F]),
    (DataType.FLOAT32, Order.ABCD, 230.5, [0x4366, 0x8000]),
    (DataType.FLOAT32, Order.ABCD, -2.0, [0xC000, 0x0000]),
    (DataType.INT16, Order.ABCD, -2.0, [0xFFFE]),
    (DataType.INT16, Order.CDAB, -2.0, [0xFFFE]),
    (DataType.INT16, Order.BADC, -2.0, [0xFEFF]),
    (DataType.INT16, Order.DCBA, -2.0, [0xFEFF]),
    (DataType.UINT16, Order.ABCD, 0x1234, [0x1234]),
    (DataType.UINT16, Order.DCBA, 0x1234, [0x3412]),
    (DataType.INT32, Order.ABCD, -2.0, [0xFFFF, 0xFFFE]),
    (DataType.INT32, Order.CDAB, -2.0, [0xFFFE, 0xFFFF]),
    (DataType.INT32, Order.ABCD, 0x01020304, [0x0102, 0x0304]),
    (DataType.INT32, Order.CDAB, 0x01020304, [0x0304, 0x0102]),
    (DataType.INT32, Order.BADC, 0x01020304, [0x0201, 0x0403]),
    (DataType.INT32, Order.DCBA, 0x01020304, [0x0403, 0x0201]),
    (DataType.UINT32, Order.ABCD, 4_000_000_000, [0xEE6B, 0x2800]),
    (DataType.UINT32, Order.CDAB, 4_000_000_000, [0x2800, 0xEE6B]),
    # 64-bit integers: values below 2**53 survive the float the physical value is
    (DataType.INT64, Order.ABCD, 0x0001020304050607, [0x0001, 0x0203, 0x0405, 0x0607]),
    (DataType.INT64, Order.CDAB, 0x0001020304050607, [0x0607, 0x0405, 0x0203, 0x0001]),
    (DataType.INT64, Order.BADC, 0x0001020304050607, [0x0100, 0x0302, 0x0504, 0x0706]),
    (DataType.INT64, Order.DCBA, 0x0001020304050607, [0x0706, 0x0504, 0x0302, 0x0100]),
    (DataType.INT64, Order.ABCD, -1.0, [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF]),
    (DataType.UINT64, Order.ABCD, 1 << 48, [0x0001, 0x0000, 0x0000, 0x0000]),
    (DataType.FLOAT64, Order.ABCD, 1.5, [0x3FF8, 0x0000, 0x0000, 0x0000]),
    (DataType.FLOAT64, Order.CDAB, 1.5, [0x0000, 0x0000, 0x0000, 0x3FF8]),
    (DataType.FLOAT64, Order.BADC, 1.5, [0xF83F, 0x0000, 0x0000, 0x0000]),
    (DataType.FLOAT64, Order.DCBA, 1.5, [0x0000, 0x0000, 0x0000, 0xF83F]),
]


@pytest.mark.parametrize(("data_type", "order", "value", "words"), VECTORS)
def test_known_vectors(data_type: DataType, order: Order, value: float, words: list[int]) -> None:
    register = reg(data_type, order)
    assert encode(value, register) == words
    assert decode(words, register) == value


@pytest.mark.parametrize(
    ("data_type", "order", "raw", "words"),
    [
        (DataType.INT64, Order.ABCD, 0x0102030405060708, [0x0102, 0x0304, 0x0506, 0x0708]),
        (DataType.INT64, Order.CDAB, 0x0102030405060708, [0x0708, 0x0506, 0x0304, 0x0102]),
        (DataType.INT64, Order.BADC, 0x0102030405060708, [0x0201, 0x0403, 0x0605, 0x0807]),
        (DataType.INT64, Order.DCBA, 0x0102030405060708, [0x0807, 0x0605, 0x0403, 0x0201]),
        (DataType.UINT64, Order.CDAB, 0xFEDCBA9876543210, [0x3210, 0x7654, 0xBA98, 0xFEDC]),
        (DataType.INT16, Order.ABCD, 0x8000 - 0x10000, [0x8000]),
    ],
)
def test_encode_raw_vectors(data_type: DataType, order: Order, raw: int, words: list[int]) -> None:
    assert encode_raw(raw, reg(data_type, order)) == words


@pytest.mark.parametrize(
    ("data_type", "scale", "offset", "words", "value"),
    [
        (DataType.INT16, 0.1, 0.0, [2305], 230.5),
        (DataType.INT16, 0.1, 0.0, [0xFFF6], -1.0),
        (DataType.UINT16, 0.01, -5.0, [1000], 5.0),
        (DataType.INT32, 0.01, 0.0, [0xFFFF, 0xFF6A], -1.5),
        (DataType.UINT32, 1000.0, 0.0, [0x0000, 0x0003], 3000.0),
        (DataType.FLOAT32, 2.0, 1.0, [0x3FC0, 0x0000], 4.0),
    ],
)
def test_scale_and_offset_applied(
    data_type: DataType, scale: float, offset: float, words: list[int], value: float
) -> None:
    register = reg(data_type, scale=scale, offset=offset)
    assert decode(words, register) == value
    assert encode(value, register) == words


@pytest.mark.parametrize(("value", "words"), [(True, [1]), (False, [0]), (1.0, [1]), (0.0, [0])])
def test_bool_encode(value: float, words: list[int]) -> None:
    assert encode(value, reg(DataType.BOOL)) == words


def test_bit_request_decodes_each_bit() -> None:
    coils = tuple(reg(DataType.BOOL, address=a, name=f"c{a}") for a in (10, 11, 14))
    decoder = RequestDecoder.build(10, 5, coils)
    assert decoder.decode([1, 0, 1, 1, 0]) == ({"c10": 1.0, "c11": 0.0, "c14": 0.0}, [])


# --- "not available" values -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data_type", "order", "words"),
    [
        (DataType.INT16, Order.ABCD, [0x8000]),
        (DataType.INT16, Order.BADC, [0x0080]),
        (DataType.UINT16, Order.ABCD, [0xFFFF]),
        (DataType.INT32, Order.ABCD, [0x8000, 0x0000]),
        (DataType.INT32, Order.CDAB, [0x0000, 0x8000]),
        (DataType.INT32, Order.ABCD, [0x7FFF, 0xFFFF]),
        (DataType.INT32, Order.DCBA, [0xFFFF, 0xFF7F]),
        (DataType.UINT32, Order.ABCD, [0xFFFF, 0xFFFF]),
        (DataType.INT64, Order.ABCD, [0x8000, 0x0000, 0x0000, 0x0000]),
        (DataType.UINT64, Order.ABCD, [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF]),
        (DataType.FLOAT32, Order.ABCD, [0x7FC0, 0x0000]),  # NaN
        (DataType.FLOAT32, Order.ABCD, [0xFFFF, 0xFFFF]),  # NaN
        (DataType.FLOAT32, Order.ABCD, [0x7F80, 0x0000]),  # +inf
        (DataType.FLOAT32, Order.CDAB, [0x0000, 0xFF80]),  # -inf
        (DataType.FLOAT64, Order.ABCD, [0x7FF8, 0x0000, 0x0000, 0x0000]),  # NaN
        (DataType.FLOAT64, Order.ABCD, [0xFFF0, 0x0000, 0x0000, 0x0000]),  # -inf
    ],
)
def test_default_sentinels_are_missing(data_type: DataType, order: Order, words: list[int]) -> None:
    register = reg(data_type, order, scale=0.1)
    decoder = RequestDecoder.build(0, data_type.words, (register,))
    assert decoder.decode(words) == ({}, ["v"])
    assert decode(words, register) is None


@pytest.mark.parametrize(
    ("data_type", "words", "value"),
    [
        (DataType.INT16, [0x7FFF], 32767.0),
        (DataType.INT16, [0x8001], -32767.0),
        (DataType.UINT16, [0xFFFE], 65534.0),
        (DataType.INT32, [0x8000, 0x0001], -2147483647.0),
        (DataType.UINT32, [0xFFFF, 0xFFFE], 4294967294.0),
        (DataType.FLOAT32, [0x7F7F, 0xFFFF], struct.unpack(">f", b"\x7f\x7f\xff\xff")[0]),
    ],
)
def test_values_next_to_sentinels_are_values(
    data_type: DataType, words: list[int], value: float
) -> None:
    assert decode(words, reg(data_type)) == value


@pytest.mark.parametrize(
    ("data_type", "missing", "words", "expected"),
    [
        # A custom set replaces the defaults ...
        (DataType.INT16, frozenset({0xFFFF}), [0xFFFF], None),
        (DataType.INT16, frozenset({0xFFFF}), [0x8000], -32768.0),
        (DataType.UINT32, frozenset({0x00000000}), [0x0000, 0x0000], None),
        (DataType.UINT32, frozenset({0x00000000}), [0xFFFF, 0xFFFF], 4294967295.0),
        (DataType.FLOAT32, frozenset({0xFF7FFFFF}), [0xFF7F, 0xFFFF], None),
        (DataType.FLOAT32, frozenset({0xFF7FFFFF}), [0x3FC0, 0x0000], 1.5),
        # ... an empty set means no sentinels (NaN/inf stay missing for floats) ...
        (DataType.INT16, frozenset(), [0x8000], -32768.0),
        (DataType.INT32, frozenset(), [0x7FFF, 0xFFFF], 2147483647.0),
        (DataType.UINT16, frozenset(), [0xFFFF], 65535.0),
        (DataType.FLOAT32, frozenset(), [0x7FC0, 0x0000], None),
        # ... and None means the type's defaults.
        (DataType.INT16, None, [0x8000], None),
    ],
)
def test_custom_missing_set(
    data_type: DataType, missing: frozenset[int] | None, words: list[int], expected: float | None
) -> None:
    assert decode(words, reg(data_type, missing=missing)) == expected


# --- wrong lengths and bad input ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("data_type", "words", "message"),
    [
        (DataType.FLOAT32, [1], "register 'v' at 0: expected 2 word(s) for a float32, got 1"),
        (DataType.FLOAT32, [1, 2, 3], "register 'v' at 0: expected 2 word(s) for a float32, got 3"),
        (DataType.INT16, [], "register 'v' at 0: expected 1 word(s) for a int16, got 0"),
        (DataType.UINT64, [0, 0, 0], "register 'v' at 0: expected 4 word(s) for a uint64, got 3"),
    ],
)
def test_decode_wrong_length(data_type: DataType, words: list[int], message: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode(words, reg(data_type))
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("words", "message"),
    [
        ([], "response to the read of 4 at 100 has 0 value(s); registers a, b cannot be decoded"),
        (
            [0x3FC0, 0, 1],
            "response to the read of 4 at 100 has 3 value(s); registers a, b cannot be decoded",
        ),
        (
            [0x3FC0, 0, 1, 2, 3],
            "response to the read of 4 at 100 has 5 value(s); registers a, b cannot be decoded",
        ),
    ],
)
def test_request_decoder_wrong_length(words: list[int], message: str) -> None:
    registers = (reg(address=100, name="a"), reg(DataType.INT16, address=103, name="b"))
    decoder = RequestDecoder.build(100, 4, registers)
    with pytest.raises(DecodeError) as info:
        decoder.decode(words)
    assert str(info.value) == message


@pytest.mark.parametrize("words", [[0x3FC0, 70000], [0x3FC0, -1], [0x3FC0, 1.5], [0x3FC0, None]])
def test_words_that_are_not_16_bit_raise_decode_error(words: list[object]) -> None:
    with pytest.raises(DecodeError, match=r"^register words are not 16-bit unsigned integers: "):
        decode(words, reg())


def test_words_to_bytes_is_big_endian() -> None:
    assert words_to_bytes([0x0102, 0xA0B0]) == b"\x01\x02\xa0\xb0"


@pytest.mark.parametrize(
    ("data_type", "value", "prefix"),
    [
        (DataType.INT16, 40000.0, "register 'v': 40000 does not fit a int16: "),
        (DataType.UINT16, -1.0, "register 'v': -1 does not fit a uint16: "),
        (DataType.UINT32, 2.0**32, "register 'v': 4294967296 does not fit a uint32: "),
    ],
)
def test_encode_out_of_range(data_type: DataType, value: float, prefix: str) -> None:
    with pytest.raises(DecodeError, match="^" + re.escape(prefix)):
        encode(value, reg(data_type))


def test_register_outside_request_is_rejected() -> None:
    with pytest.raises(DecodeError) as info:
        RequestDecoder.build(10, 4, (reg(address=12, name="late"), reg(address=13, name="out")))
    assert str(info.value) == "register 'out' at 13 lies outside the request 10..13"


# --- bulk decoding ------------------------------------------------------------------------------


def test_request_with_gaps_and_mixed_orders() -> None:
    layout = [
        # register, value; words 102, 108, 109 and 113 are not mapped
        (reg(DataType.FLOAT32, Order.ABCD, 100, "p"), 230.5),
        (reg(DataType.INT16, Order.BADC, 103, "q", scale=0.1), -12.5),
        (reg(DataType.UINT32, Order.CDAB, 104, "r"), 4_000_000_000.0),
        (reg(DataType.FLOAT32, Order.DCBA, 106, "s"), -0.25),
        (reg(DataType.UINT16, Order.ABCD, 110, "t"), 0xFFFF),  # default sentinel
        (reg(DataType.INT32, Order.BADC, 111, "u", offset=-1.0), 99.0),
        (reg(DataType.INT64, Order.DCBA, 114, "w"), -(2**40) * 1.0),
        (reg(DataType.FLOAT64, Order.CDAB, 118, "x"), 1e-300),
    ]
    words = [0xDEAD] * 22
    for register, value in layout:
        at = register.address - 100
        raw = 0xFFFF if register.name == "t" else (value - register.offset) / register.scale
        if not register.data_type.is_float:
            raw = round(raw)
        words[at : at + register.data_type.words] = reference_words(
            raw, register.data_type, register.order
        )
    decoder = RequestDecoder.build(100, 22, tuple(r for r, _ in layout))
    values, missing = decoder.decode(words)
    assert values == {
        "p": 230.5,
        "q": -12.5,
        "r": 4_000_000_000.0,
        "s": -0.25,
        "u": 99.0,
        "w": -(2.0**40),
        "x": 1e-300,
    }
    assert missing == ["t"]


def test_overlapping_registers_all_decode() -> None:
    registers = (
        reg(DataType.FLOAT32, Order.ABCD, 0, "as_float"),
        reg(DataType.UINT32, Order.ABCD, 0, "as_uint32"),
        reg(DataType.UINT16, Order.ABCD, 0, "high"),
        reg(DataType.INT16, Order.ABCD, 1, "low"),
        reg(DataType.UINT16, Order.BADC, 0, "high_swapped"),
        reg(DataType.UINT32, Order.CDAB, 0, "words_swapped"),
    )
    decoder = RequestDecoder.build(0, 2, registers)
    assert decoder.decode([0x3FC0, 0xFFFE]) == (
        {
            "as_float": struct.unpack(">f", b"\x3f\xc0\xff\xfe")[0],
            "as_uint32": float(0x3FC0FFFE),
            "high": float(0x3FC0),
            "low": -2.0,
            "high_swapped": float(0xC03F),
            "words_swapped": float(0xFFFE3FC0),
        },
        [],
    )


def test_decode_keeps_register_order_of_missing() -> None:
    registers = tuple(reg(DataType.INT16, address=a, name=f"r{a}") for a in (3, 0, 2, 1))
    decoder = RequestDecoder.build(0, 4, registers)
    assert decoder.decode([0x8000, 0x8000, 7, 0x8000]) == ({"r2": 7.0}, ["r3", "r0", "r1"])


@st.composite
def request_layouts(
    draw: st.DrawFn,
) -> tuple[int, int, list[tuple[Register, float | int]], list[int]]:
    """Registers at random spacing with random types/orders, and the words of their values."""
    start = draw(st.integers(0, 1000))
    position = start
    layout: list[tuple[Register, float | int]] = []
    words: list[int] = []
    for index in range(draw(st.integers(1, 12))):
        gap = draw(st.integers(0, 3))
        words.extend(draw(st.lists(st.integers(0, 0xFFFF), min_size=gap, max_size=gap)))
        position += gap
        data_type = draw(st.sampled_from(NUMERIC))
        order = draw(st.sampled_from(ORDERS))
        raw = draw(raw_values(data_type))
        register = reg(data_type, order, position, f"r{index}")
        layout.append((register, raw))
        words.extend(reference_words(raw, data_type, order))
        position += data_type.words
    return start, position - start, layout, words


@FAST
@given(request_layouts())
def test_request_decoder_matches_per_register_reference(
    case: tuple[int, int, list[tuple[Register, float | int]], list[int]],
) -> None:
    start, count, layout, words = case
    decoder = RequestDecoder.build(start, count, tuple(r for r, _ in layout))
    values, missing = decoder.decode(words)
    expected_missing = [
        r.name
        for r, raw in layout
        if unsigned_pattern(raw, r.data_type) in DEFAULT_MISSING[r.data_type]
    ]
    assert missing == expected_missing
    assert set(values) == {r.name for r, _ in layout} - set(expected_missing)
    for register, raw in layout:
        if register.name in values:
            assert same_float(values[register.name], float(raw))
            assert math.isfinite(values[register.name])
