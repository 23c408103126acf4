"""Strings, enums, bitfields, byte halves and scale-factor registers: decoding, planning,
profiles, messages and line protocol."""

from __future__ import annotations

import pytest

from emm.codec import RequestDecoder, decode, decode_text, encode, encode_text
from emm.errors import ConfigError
from emm.messages import Meter, Reading, Status
from emm.plan import Plan
from emm.planner import ReadLimits, ReadRequest
from emm.planner import plan as plan_requests
from emm.profiles import parse_profile
from emm.registers import DataType, Register
from writer.lines import reading_lines

pytestmark = pytest.mark.timeout(30)

W = Register("acPower", 10, 3, DataType.INT16, unit="W", scale_register="W_SF")
W_SF = Register("W_SF", 11, 3, DataType.INT16)
STATE = Register("state", 12, 3, DataType.UINT16, enum=((1, "OFF"), (4, "MPPT")))
EVENTS = Register("events", 13, 3, DataType.UINT32, bits=((0, "GROUND_FAULT"), (7, "OVER_TEMP")))
SERIAL = Register("serial", 15, 3, DataType.STRING, length=4)
HIGH = Register("major", 19, 3, DataType.UINT8_HIGH)
LOW = Register("minor", 19, 3, DataType.INT8_LOW)
ALL = (W, W_SF, STATE, EVENTS, SERIAL, HIGH, LOW)


def test_one_request_decodes_numbers_and_text() -> None:
    decoder = RequestDecoder.build(10, 10, ALL)
    words = [0x1A2C, 0xFFFF, 4, 0x0000, 0x0081, 0x4142, 0x4320, 0x2000, 0x0000, 0x02FE]
    assert decoder.decode(words) == (
        {"W_SF": -1.0, "acPower": 670.0, "major": 2.0, "minor": -2.0},
        [],
    )
    assert decoder.has_text
    assert decoder.decode_text(words) == (
        {"state": "MPPT", "events": "GROUND_FAULT,OVER_TEMP", "serial": "ABC"},
        [],
    )


@pytest.mark.parametrize(
    ("value", "sf", "expected"),
    [
        (0x08FD, 0xFFFF, 230.1),  # 2301 x 10^-1: divided, so exactly 230.1
        (0x0001, 0x0003, 1000.0),
        (0x7FFF, 0x0000, 32767.0),
        (0x8000, 0x0000, None),  # int16 not implemented
        (0x08FD, 0x8000, None),  # the scale factor not implemented
        (0x08FD, 0x0020, None),  # a scale factor of 10^32 is no scale factor
    ],
)
def test_the_scale_factor_of_the_same_response_applies(
    value: int, sf: int, expected: float | None
) -> None:
    decoder = RequestDecoder.build(10, 2, (W, W_SF))
    values, missing = decoder.decode([value, sf])
    assert values.get("acPower") == expected
    assert ("acPower" in missing) == (expected is None)


def test_a_value_whose_scale_factor_is_not_in_the_request_is_not_available() -> None:
    values, missing = RequestDecoder.build(10, 1, (W,)).decode([0x08FD])
    assert values == {}
    assert missing == ["acPower"]


def test_each_reading_uses_its_own_scale_factor() -> None:
    # dawn, then noon: the device changed its scale factor between the two reads
    decoder = RequestDecoder.build(10, 2, (W, W_SF))
    assert decoder.decode([123, 0xFFFE])[0]["acPower"] == 1.23
    assert decoder.decode([670, 0x0001])[0]["acPower"] == 6700.0


@pytest.mark.parametrize(("value", "sf"), [(123.4, -1), (12.34, -2), (1200.0, 2), (-5.0, 0)])
def test_encode_with_a_scale_factor_round_trips(value: float, sf: int) -> None:
    assert decode(encode(value, W, sf), W, sf) == value


@pytest.mark.parametrize(
    ("words", "text"),
    [
        ([0x534D, 0x4100, 0x0000, 0x0000], "SMA"),
        ([0x534D, 0x4120, 0x2020, 0x2020], "SMA"),  # space padded
        ([0x534D, 0x4100, 0x5858, 0x5858], "SMA"),  # after the first NUL: not the text
        ([0xC3A9, 0x7465, 0x0000, 0x0000], "éte"),  # UTF-8
        ([0, 0, 0, 0], None),  # empty: not available
        ([0x2020, 0x2020, 0x2020, 0x2020], None),
    ],
)
def test_strings_are_trimmed(words: list[int], text: str | None) -> None:
    assert decode_text(words, SERIAL) == text


def test_text_round_trips_through_encode_text() -> None:
    assert decode_text(encode_text("SN42", SERIAL), SERIAL) == "SN42"
    assert decode_text(encode_text("MPPT", STATE), STATE) == "MPPT"
    assert decode_text(encode_text("OVER_TEMP", EVENTS), EVENTS) == "OVER_TEMP"
    assert decode_text([0, 0x0104], EVENTS) == "bit2,bit8"
    assert decode_text([9], STATE) == "9"  # a value without a name: its number
    assert decode_text([0xFFFF], STATE) is None  # uint16 not implemented


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"data_type": DataType.STRING}, "a string needs a length of 1..125 registers, got 0"),
        ({"data_type": DataType.UINT16, "length": 2}, "length 2 is for strings only"),
        (
            {"data_type": DataType.FLOAT32, "enum": ((1, "ON"),)},
            "enum and bits need an integer data_type, not float32",
        ),
        ({"data_type": DataType.UINT16, "bits": ((16, "X"),)}, "bit 16 is outside 0..15 of 'r'"),
        (
            {"data_type": DataType.UINT16, "scale_register": "r"},
            "register 'r' cannot be its own scale_register",
        ),
    ],
)
def test_bad_new_types_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Register("r", 0, 3, **kwargs)  # type: ignore[arg-type]
    assert str(info.value) == message


def test_the_planner_keeps_a_value_with_its_scale_factor() -> None:
    far_sf = Register("W_SF", 100, 3, DataType.INT16)
    near = Register("V", 40, 3, DataType.UINT16)
    # without the link, a gap of 0 would split 10 and 100 apart; linked they share a request
    requests = plan_requests((W, far_sf, near), ReadLimits(max_gap=0))
    assert requests == [ReadRequest(3, 10, 91)]
    with pytest.raises(ConfigError) as info:
        plan_requests((W, far_sf), ReadLimits(max_registers=50))
    assert str(info.value) == (
        "register 'acPower' needs 91 registers (read with W_SF), more than the device's limit "
        "of 50 per request"
    )
    with pytest.raises(ConfigError) as info:
        Plan.build((W,))
    assert str(info.value) == "register 'acPower': scale_register 'W_SF' is not a register"


PROFILE = """
type = "typed"

[[registers]]
name = "serial"
address = 0
function_code = 3
data_type = "string"
length = 8
poll_every = 0

[[registers]]
name = "state"
address = 8
function_code = 3
data_type = "uint16"
enum = { 1 = "OFF", 4 = "MPPT" }

[[registers]]
name = "major"
address = 9
function_code = 3
data_type = "uint8_high"

[[registers]]
name = "minor"
address = 9
function_code = 3
data_type = "uint8_low"

[[registers]]
name = "acPower"
address = 10
function_code = 3
data_type = "int16"
unit = "W"
scale_register = "W_SF"

[[registers]]
name = "W_SF"
address = 11
function_code = 3
data_type = "int16"
"""


def test_a_profile_speaks_the_new_types() -> None:
    profile = parse_profile(PROFILE, "typed.toml")
    by_name = {r.name: r for r in profile.registers}
    assert by_name["serial"].length == 8 and by_name["serial"].is_text
    assert by_name["state"].enum == ((1, "OFF"), (4, "MPPT"))
    assert by_name["acPower"].scale_register == "W_SF"
    # the two halves of one register may share it; the job's rows carry every new column
    plan = Plan.build(profile.registers)
    assert Plan.decode(plan.encoded) == plan
    bad = PROFILE.replace('scale_register = "W_SF"', 'scale_register = "nope"')
    with pytest.raises(ConfigError) as info:
        parse_profile(bad, "typed.toml")
    assert str(info.value) == "typed.toml: line 31: scale_register 'nope' is not a register"


METER = Meter(7, "10.0.0.5", 502, 1, "inverter")


def test_text_goes_to_meter_info_as_string_fields() -> None:
    reading = Reading(
        METER,
        1_700_000_000_000,
        {"acPower": 670.0},
        Status(up=True, requests=1),
        text={"maker": 'SMA "Solar"', "state": "MPPT"},
    )
    lines = reading_lines(reading)
    assert lines[0] == "energy,meter_id=7,type=inverter acPower=670.0 1700000000000"
    assert lines[1] == (
        'meter_info,meter_id=7,type=inverter maker="SMA \\"Solar\\"",state="MPPT" 1700000000000'
    )
    assert lines[2].startswith("meter_status,meter_id=7,type=inverter ")
    assert ",values=3i," in lines[2]
    assert Reading.decode(reading.encode()) == reading


def test_a_reading_without_text_is_written_as_before() -> None:
    reading = Reading(METER, 1, {"v": 1.0}, Status(up=True))
    assert b'"text"' not in reading.encode()
    assert Reading.decode(reading.encode()).text == {}
    assert [line.split(",")[0] for line in reading_lines(reading)] == ["energy", "meter_status"]


def test_database_rows_whose_scale_factor_is_missing_are_skipped() -> None:
    from emm.config import build_type

    def row(id_: int, name: str, address: int, **extra: object) -> tuple[str, dict[str, object]]:
        data = {"id": id_, "type": "inv", "name": name, "address": address, "data_type": 1}
        return ("register", {**data, "function_code": 3, **extra})

    rows = [
        row(1, "acPower", 0, scale_register="W_SF"),
        row(2, "W_SF", 1),
        row(3, "dcPower", 2, scale_register="DCW_SF"),
        row(4, "serial", 3, data_type=10, length=4, poll_every=0),
        row(5, "state", 7, data_type=4, enum={"1": "OFF"}),
    ]
    registers, _limits, errors = build_type(rows, "inv")
    assert [r.name for r in registers] == ["acPower", "W_SF", "serial", "state"]
    assert errors == [
        "registers row (type 'inv', 'dcPower') skipped: scale_register 'DCW_SF' is not a register"
    ]
    assert registers[3].enum == ((1, "OFF"),)
