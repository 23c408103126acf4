"""writer.lines: the exact line-protocol text of a reading."""

from __future__ import annotations

import pytest

from emm.messages import GatewayStatus, Meter, Reading, Status
from writer.lines import Unwritable, gateway_status_lines, reading_bytes, reading_lines

pytestmark = pytest.mark.timeout(30)

TS = 1_700_000_000_000
METER = Meter(7, "10.0.0.5", 502, 1, "sdm630", "hall A")


def test_reading_with_values() -> None:
    reading = Reading(
        METER,
        TS,
        {"voltageL1": 230.5, "activePower": -1500.0, "energy": 1e-05, "big": 1e16},
        Status(up=True, latency_ms=12.25, requests=3),
        missing=("currentL1",),
    )
    assert reading_lines(reading) == [
        "energy,description=hall\\ A,meter_id=7,type=sdm630 "
        "voltageL1=230.5,activePower=-1500.0,energy=1e-05,big=1e+16 1700000000000",
        "meter_status,description=hall\\ A,meter_id=7,type=sdm630 "
        'up=true,error_code="",latency_ms=12.25,requests=3i,values=4i,missing=1i,errors=0i '
        "1700000000000",
    ]


def test_description_omitted_when_none_or_empty() -> None:
    for description in (None, ""):
        meter = Meter(7, "h", 502, 1, "sdm630", description)
        reading = Reading(meter, TS, {"v": 1.0}, Status(up=True))
        assert reading_lines(reading) == [
            "energy,meter_id=7,type=sdm630 v=1.0 1700000000000",
            'meter_status,meter_id=7,type=sdm630 up=true,error_code="",latency_ms=0.0,'
            "requests=0i,values=1i,missing=0i,errors=0i 1700000000000",
        ]


def test_failed_read_has_only_a_status_line() -> None:
    reading = Reading(
        Meter(12, "h", 502, 1, "abb_b23"),
        TS,
        {},
        Status(up=False, error_code="timeout", error="no answer", latency_ms=3000, requests=3),
        errors={"a": "no answer", "b": "no answer"},
    )
    assert reading_lines(reading) == [
        'meter_status,meter_id=12,type=abb_b23 up=false,error_code="timeout",latency_ms=3000.0,'
        "requests=3i,values=0i,missing=0i,errors=2i 1700000000000",
    ]


@pytest.mark.parametrize(
    ("description", "tag"),
    [
        ("hall A", "hall\\ A"),
        ("a,b", "a\\,b"),
        ("k=v", "k\\=v"),
        ("Hall 2, line=3", "Hall\\ 2\\,\\ line\\=3"),
        # InfluxDB unescapes only these three: a backslash is stored as written
        ("C:\\data\\x", "C:\\data\\x"),
    ],
)
def test_tag_escaping(description: str, tag: str) -> None:
    reading = Reading(Meter(1, "h", 502, 1, "t", description), 5, {}, Status(up=True))
    assert reading_lines(reading) == [
        f'meter_status,description={tag},meter_id=1,type=t up=true,error_code="",'
        "latency_ms=0.0,requests=0i,values=0i,missing=0i,errors=0i 5"
    ]


def test_type_tag_is_escaped() -> None:
    reading = Reading(Meter(1, "h", 502, 1, "my type,x=1"), 5, {"p.q-r": 1.5}, Status(up=True))
    assert reading_lines(reading)[0] == "energy,meter_id=1,type=my\\ type\\,x\\=1 p.q-r=1.5 5"


@pytest.mark.parametrize(
    ("meter", "fields", "reason"),
    [
        (Meter(1, "h", 502, 1, "t", "two\nlines"), {}, "tag description contains the control"),
        (Meter(1, "h", 502, 1, "t\r"), {}, "tag type contains the control character '\\r'"),
        (Meter(1, "h", 502, 1, "t", "ends\\"), {}, "tag description has a backslash at the end"),
        (Meter(1, "h", 502, 1, "t", "a\\,b"), {}, "tag description has a backslash at the end"),
        (Meter(1, "h", 502, 1, "t\\ x"), {}, "tag type has a backslash at the end or before"),
        (Meter(1, "h", 502, 1, "t", "x" * 70_000), {}, "is 70000 characters long, at most 256"),
        (Meter(1, "h", 502, 1, "t" * 65), {}, "tag type is 65 characters long, at most 64"),
        (Meter(1, "h", 502, 1, "t"), {"type": 1.0}, "measurement_name 'type' is reserved"),
        (Meter(1, "h", 502, 1, "t"), {"time": 1.0}, "measurement_name 'time' is reserved"),
        (Meter(1, "h", 502, 1, "t"), {"meter_id": 1.0}, "'meter_id' is reserved"),
        (Meter(1, "h", 502, 1, "t"), {"p q": 1.0}, "measurement_name 'p q' must start with"),
        (Meter(1, "h", 502, 1, "t"), {"v\n": 1.0}, "measurement_name 'v\\n' must start with"),
        (Meter(1, "h", 502, 1, "t"), {f"v{i}": 1.0 for i in range(2001)}, "2001 fields, at most"),
    ],
)
def test_what_line_protocol_cannot_carry_is_refused(meter: Meter, fields, reason: str) -> None:
    reading = Reading(meter, 5, fields, Status(up=True))
    with pytest.raises(Unwritable) as raised:
        reading_bytes(reading)
    assert reason in str(raised.value)


def test_text_that_is_not_unicode_is_refused() -> None:
    reading = Reading(Meter(1, "h", 502, 1, "t"), 5, {}, Status(up=False, error_code="x\ud800"))
    with pytest.raises(Unwritable, match="not valid Unicode"):
        reading_bytes(reading)


def test_reading_bytes_are_the_lines_in_utf8() -> None:
    reading = Reading(Meter(1, "h", 502, 1, "t", "Zähler"), 5, {"v": 1.0}, Status(up=True))
    assert reading_bytes(reading) == "\n".join(reading_lines(reading)).encode()


@pytest.mark.parametrize(
    ("error_code", "field"),
    [
        ("modbus_exception_2", '"modbus_exception_2"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("two\nlines", '"two lines"'),
    ],
)
def test_error_code_string_escaping(error_code: str, field: str) -> None:
    reading = Reading(Meter(1, "h", 502, 1, "t"), 5, {}, Status(up=False, error_code=error_code))
    assert reading_lines(reading) == [
        f"meter_status,meter_id=1,type=t up=false,error_code={field},latency_ms=0.0,"
        "requests=0i,values=0i,missing=0i,errors=0i 5"
    ]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.1, "0.1"),
        (1 / 3, "0.3333333333333333"),
        (-0.0, "-0.0"),
        (123456789.0, "123456789.0"),
        (2.5e-300, "2.5e-300"),
    ],
)
def test_float_fields_use_repr(value: float, text: str) -> None:
    reading = Reading(Meter(1, "h", 502, 1, "t"), 5, {"v": value}, Status(up=True))
    assert reading_lines(reading)[0] == f"energy,meter_id=1,type=t v={text} 5"


def test_gateway_status_is_one_point_tagged_with_its_gateway() -> None:
    status = GatewayStatus(
        host="10.0.0.5",
        port=4196,
        tick_ms=TS,
        period_ms=2_000,
        connections=1,
        meters=4,
        requests=16,
        busy_ms=1_700.25,
        late=2,
    )
    assert gateway_status_lines(status) == [
        "gateway_status,gateway=10.0.0.5:4196 meters=4i,requests=16i,busy_ms=1700.25,"
        f"utilisation=0.8501,late=2i,connections=1i,period_ms=2000i {TS}"
    ]
