"""emm.messages: Job/Reading JSON round trips; a bad body raises MessageError with its bytes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emm.errors import ConfigError, MessageError
from emm.messages import JOB_VERSION, Job, Meter, Reading, Status
from emm.planner import ReadRequest
from emm.registers import DataType, Order, Register

pytestmark = pytest.mark.timeout(30)

FAST = settings(max_examples=200, deadline=None)

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.\-]{0,15}", fullmatch=True)
finite = st.floats(allow_nan=False, allow_infinity=False)
text = st.text(max_size=30)

meters = st.builds(
    Meter,
    id=st.integers(1, 2**31 - 1),
    host=st.text(min_size=1, max_size=20),
    port=st.integers(1, 65535),
    unit_id=st.integers(0, 255),
    type=st.from_regex(r"[a-z0-9_]{1,20}", fullmatch=True),
    description=st.none() | st.text(max_size=30),
)


@st.composite
def registers(draw: st.DrawFn) -> Register:
    data_type = draw(st.sampled_from(list(DataType)))
    return Register(
        name=draw(names),
        address=draw(st.integers(0, 65532)),
        function_code=draw(st.sampled_from([1, 2] if data_type is DataType.BOOL else [3, 4])),
        data_type=data_type,
        order=draw(st.sampled_from(list(Order))),
        unit=draw(st.sampled_from(["", "V", "kWh", "µs"])),
        scale=draw(finite.filter(lambda x: x != 0)),
        offset=draw(finite),
        missing=draw(st.none() | st.frozensets(st.integers(0, 0xFFFF), max_size=3)),
    )


jobs = st.builds(
    Job,
    meter=meters,
    tick_ms=st.integers(0, 2**42),
    deadline_ms=st.integers(0, 2**42),
    requests=st.lists(
        st.builds(
            ReadRequest, st.sampled_from([1, 2, 3, 4]), st.integers(0, 65535), st.integers(1, 2000)
        ),
        max_size=5,
    ).map(tuple),
    registers=st.lists(registers(), max_size=8).map(tuple),
)

readings = st.builds(
    Reading,
    meter=meters,
    tick_ms=st.integers(0, 2**42),
    fields=st.dictionaries(names, finite, max_size=8),
    status=st.builds(
        Status,
        up=st.booleans(),
        error_code=text,
        error=text,
        latency_ms=finite,
        requests=st.integers(0, 1000),
    ),
    missing=st.lists(names, max_size=4).map(tuple),
    errors=st.dictionaries(names, text, max_size=4),
)


@FAST
@given(jobs)
def test_job_round_trip(job: Job) -> None:
    body = job.encode()
    assert Job.decode(body) == job
    assert Job.decode(body) == job  # again, now that its plan is known


def test_a_known_plan_is_not_parsed_again_and_the_head_still_is() -> None:
    first = Job(METER, 1_000, 11_000, JOB.requests, JOB.registers)
    other = Job(Meter(8, "10.0.0.6", 503, 2, "sdm630"), 2_000, 12_000, JOB.requests, JOB.registers)
    assert Job.decode(first.encode()) == first
    assert Job.decode(other.encode()) == other
    # a broken head behind a known plan is reported from the whole body
    body = other.encode().replace(b'"tick_ms":2000', b'"tick_ms":"soon"')
    with pytest.raises(MessageError) as info:
        Job.decode(body)
    assert info.value.raw == body
    assert str(info.value) == "job is malformed: invalid literal for int() with base 10: 'soon'"


def test_a_version_1_job_is_still_read() -> None:
    body = json.dumps(
        {
            "v": 1,
            "kind": "job",
            "meter": METER.to_dict(),
            "tick_ms": JOB.tick_ms,
            "deadline_ms": JOB.deadline_ms,
            "requests": [[4, 0, 2]],
            "registers": [REGISTER.to_dict()],
        }
    ).encode()
    assert Job.decode(body) == JOB


@FAST
@given(readings)
def test_reading_round_trip(reading: Reading) -> None:
    assert Reading.decode(reading.encode()) == reading


METER = Meter(7, "10.0.0.5", 502, 1, "sdm630", "hall")
REGISTER = Register("voltageL1", 0, 4, DataType.FLOAT32, Order.CDAB, "V", 0.1)
JOB = Job(METER, 1_700_000_000_000, 1_700_000_010_000, (ReadRequest(4, 0, 2),), (REGISTER,))
READING = Reading(
    METER,
    1_700_000_000_000,
    {"voltageL1": 230.5},
    Status(up=False, error_code="timeout", error="boom", latency_ms=1.5, requests=2),
    ("currentL1",),
    {"powerL1": "timeout"},
)


def test_job_wire_format() -> None:
    assert JOB.encode() == (
        b'{"v":2,"kind":"job","meter":{"id":7,"host":"10.0.0.5","port":502,"unit_id":1,'
        b'"type":"sdm630","description":"hall"},"tick_ms":1700000000000,'
        b'"deadline_ms":1700000010000,"requests":[[4,0,2]],'
        b'"registers":[["voltageL1",0,4,"V","float32","CDAB",0.1]]}'
    )
    assert JOB_VERSION == 2
    assert JOB.job_id == "7@1700000000000"
    assert READING.reading_id == "7@1700000000000"


def test_reading_wire_format() -> None:
    assert READING.encode() == (
        b'{"v":1,"kind":"reading","meter":{"id":7,"host":"10.0.0.5","port":502,"unit_id":1,'
        b'"type":"sdm630","description":"hall"},"tick_ms":1700000000000,'
        b'"fields":{"voltageL1":230.5},"status":{"up":false,"error_code":"timeout",'
        b'"error":"boom","latency_ms":1.5,"requests":2},"missing":["currentL1"],'
        b'"errors":{"powerL1":"timeout"},"counters":[]}'
    )


def test_reading_with_non_finite_value_is_not_encoded() -> None:
    reading = Reading(METER, 1, {"v": float("nan")}, Status(up=True))
    with pytest.raises(ValueError, match=r"^Out of range float values are not JSON compliant"):
        reading.encode()


def _changed(message: Job | Reading, **changes: Any) -> bytes:
    """`message` encoded, with keys replaced (or removed, for the value KeyError)."""
    data = json.loads(message.encode())
    for key, value in changes.items():
        if value is KeyError:
            del data[key]
        else:
            data[key] = value
    return json.dumps(data).encode()


def _job(**changes: Any) -> bytes:
    return _changed(JOB, **changes)


def _reading(**changes: Any) -> bytes:
    return _changed(READING, **changes)


GOOD_REGISTER = {"name": "v", "address": 0, "fc": 3, "type": "int16"}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            b"{",
            "job is not valid JSON: Expecting property name enclosed in double quotes: "
            "line 1 column 2 (char 1)",
        ),
        (b"", "job is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
        (
            b"\xff",
            "job is not UTF-8 text: 'utf-8' codec can't decode byte 0xff in position 0: "
            "invalid start byte",
        ),
        (b"[1, 2]", "job is not a JSON object"),
        (b'"job"', "job is not a JSON object"),
        (b"null", "job is not a JSON object"),
        (_job(v=3), "job has schema version 3, this build reads 1 and 2"),
        (_job(v=KeyError), "job has schema version None, this build reads 1 and 2"),
        (_job(v="1"), "job has schema version '1', this build reads 1 and 2"),
        (_job(v=True), "job has schema version True, this build reads 1 and 2"),
        (_job(kind="reading"), "expected a job, got kind 'reading'"),
        (_job(kind=KeyError), "expected a job, got kind None"),
        (_job(tick_ms=KeyError), "job lacks the key 'tick_ms'"),
        (_job(meter=KeyError), "job lacks the key 'meter'"),
        (_job(registers=KeyError), "job lacks the key 'registers'"),
        (_job(meter={"id": 1, "host": "h", "port": 502, "unit_id": 1}), "job lacks the key 'type'"),
        (
            _job(meter={"id": 1, "host": "h", "port": 70000, "unit_id": 1, "type": "t"}),
            "job is malformed: meter 1: port 70000 is outside 1..65535",
        ),
        (_job(tick_ms="soon"), "job is malformed: invalid literal for int() with base 10: 'soon'"),
        (
            _job(requests=[[3, 0]]),
            "job is malformed: not enough values to unpack (expected 3, got 2)",
        ),
        (
            _job(registers=[dict(GOOD_REGISTER, fc=5)]),
            "job is malformed: function_code 5 is not a read function code (1, 2, 3, 4)",
        ),
        (
            _job(registers=[{"name": "v", "address": 0, "type": "int16"}]),
            "job is malformed: register is missing the key 'fc'",
        ),
        (
            _job(registers=[GOOD_REGISTER, dict(GOOD_REGISTER, type="int99")]),
            "job is malformed: unknown data_type 'int99' (known: 1 int16, 2 int32, 3 float32, "
            "4 uint16, 5 uint32, 6 int64, 7 uint64, 8 float64, 9 bool)",
        ),
        (_job(registers=["v"]), "job is malformed: register must be a list or an object, got str"),
        (
            _job(registers=[None]),
            "job is malformed: register must be a list or an object, got NoneType",
        ),
        (
            _job(registers=[["v", 0]]),
            "job is malformed: register row has 2 values, expected 3 to 9: name, address, fc, "
            "unit, type, order, scale, offset, missing",
        ),
        (
            _job(registers=[["v", 0, 3, "", "int16", "ABCD", 0]]),
            "job is malformed: scale 0.0 must be a finite number other than 0",
        ),
    ],
)
def test_bad_job(body: bytes, reason: str) -> None:
    with pytest.raises(MessageError) as info:
        Job.decode(body)
    assert info.value.raw == body
    assert info.value.reason == reason
    assert str(info.value) == reason


def test_deeply_nested_body_is_a_message_error() -> None:
    body = b"[" * 100_000
    with pytest.raises(MessageError) as info:
        Job.decode(body)
    assert info.value.raw is body
    assert info.value.reason.startswith("job is not valid JSON: maximum recursion depth exceeded")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "reading is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
        (b"42", "reading is not a JSON object"),
        (_reading(v=0), "reading has schema version 0, this build reads 1"),
        (_reading(v=2), "reading has schema version 2, this build reads 1"),
        (_reading(kind="job"), "expected a reading, got kind 'job'"),
        (JOB.encode(), "expected a reading, got kind 'job'"),
        (_reading(fields=KeyError), "reading lacks the key 'fields'"),
        (_reading(status={"error": "x"}), "reading lacks the key 'up'"),
        (_reading(fields=[1.0]), "reading is malformed: 'list' object has no attribute 'items'"),
        (
            _reading(fields={"a": "high"}),
            "reading is malformed: could not convert string to float: 'high'",
        ),
        (_reading(status=None), "reading is malformed: 'NoneType' object is not subscriptable"),
        (_reading(errors=["x"]), "reading is malformed: 'list' object has no attribute 'items'"),
        (
            _reading(meter={"id": 1, "host": "", "port": 1, "unit_id": 1, "type": "t"}),
            "reading is malformed: meter 1: host is empty",
        ),
        (
            READING.encode().replace(b"230.5", b"NaN"),
            "reading is malformed: a field value is not a finite number",
        ),
        (
            READING.encode().replace(b"230.5", b"Infinity"),
            "reading is malformed: a field value is not a finite number",
        ),
        (
            READING.encode().replace(b"230.5", b"1e999"),
            "reading is malformed: a field value is not a finite number",
        ),
        (
            _reading(fields={"a": 1.0, "b": "-inf"}),
            "reading is malformed: a field value is not a finite number",
        ),
    ],
)
def test_bad_reading(body: bytes, reason: str) -> None:
    with pytest.raises(MessageError) as info:
        Reading.decode(body)
    assert info.value.raw == body
    assert str(info.value) == reason


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"port": 0}, "meter 3: port 0 is outside 1..65535"),
        ({"port": 65536}, "meter 3: port 65536 is outside 1..65535"),
        ({"unit_id": 256}, "meter 3: unit id 256 is outside 0..255"),
        ({"unit_id": -1}, "meter 3: unit id -1 is outside 0..255"),
        ({"host": ""}, "meter 3: host is empty"),
    ],
)
def test_meter_validation(kwargs: dict[str, Any], message: str) -> None:
    fields: dict[str, Any] = {"id": 3, "host": "h", "port": 502, "unit_id": 1, "type": "t"}
    fields.update(kwargs)
    with pytest.raises(ConfigError) as info:
        Meter(**fields)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("description", "tags"),
    [
        (None, {"meter_id": "3", "type": "t"}),
        ("", {"meter_id": "3", "type": "t"}),
        ("hall", {"meter_id": "3", "type": "t", "description": "hall"}),
    ],
)
def test_meter_tags(description: str | None, tags: dict[str, str]) -> None:
    assert Meter(3, "h", 502, 1, "t", description).tags() == tags


def test_reading_defaults_for_optional_keys() -> None:
    data = json.loads(READING.encode())
    del data["missing"], data["errors"]
    data["status"] = {"up": True}
    reading = Reading.decode(json.dumps(data).encode())
    assert reading.missing == ()
    assert reading.errors == {}
    assert reading.status == Status(up=True, error_code="", error="", latency_ms=0.0, requests=0)
