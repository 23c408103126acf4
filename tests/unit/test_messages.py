"""emm.messages: Job/Reading JSON round trips; a bad body raises MessageError with its bytes."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from emm.errors import ConfigError, MessageError
from emm.messages import (
    JOB_VERSION,
    Gateway,
    GatewayStatus,
    Job,
    Meter,
    Reading,
    Status,
    decode_result,
)
from emm.plan import Plan, PlanCache
from emm.planner import ReadLimits, ReadRequest
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
        address=draw(st.integers(0, 65531)),
        function_code=draw(st.sampled_from([1, 2] if data_type is DataType.BOOL else [3, 4])),
        data_type=data_type,
        order=draw(st.sampled_from(list(Order))),
        unit=draw(st.sampled_from(["", "V", "kWh", "µs"])),
        scale=draw(finite.filter(lambda x: x != 0)),
        offset=draw(finite),
        missing=draw(
            st.none() | st.frozensets(st.integers(0, (1 << data_type.bits) - 1), max_size=3)
        ),
        length=draw(st.integers(1, 4)) if data_type is DataType.STRING else 0,
    )


plans = st.builds(
    Plan.build,
    st.lists(registers(), max_size=8),
    st.builds(
        ReadLimits,
        max_registers=st.integers(4, 125),
        max_bits=st.integers(1, 2000),
        max_gap=st.integers(0, 60),
    ),
)

gateways = st.builds(
    Gateway,
    max_connections=st.integers(1, 16),
    pause_between_requests_ms=st.integers(0, 10_000),
    pause_after_connect_ms=st.integers(0, 10_000),
    request_timeout_ms=st.none() | st.integers(10, 60_000),
    max_read_registers=st.none() | st.integers(1, 125),
    framing=st.sampled_from(["tcp", "rtu-over-tcp"]),
)

jobs = st.builds(
    Job,
    meter=meters,
    tick_ms=st.integers(0, 2**42),
    deadline_ms=st.integers(0, 2**42),
    plan=plans,
    gateway=gateways,
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
    plans = PlanCache()
    assert Job.decode(body, plans) == job
    assert Job.decode(body, plans) == job  # again, now that its plan is known
    assert Job.decode(body) == job  # the process's own cache


def test_a_known_plan_is_not_parsed_again_and_the_head_still_is() -> None:
    plans = PlanCache()
    first = Job(METER, 1_000, 11_000, JOB.plan)
    other = Job(Meter(8, "10.0.0.6", 503, 2, "sdm630"), 2_000, 12_000, JOB.plan)
    decoded = Job.decode(first.encode(), plans)
    assert decoded == first
    assert decoded.plan is not JOB.plan  # parsed from the body, then kept
    again = Job.decode(other.encode(), plans)
    assert again == other
    assert again.plan is decoded.plan
    assert len(plans) == 1
    # a broken head behind a known plan is reported from the whole body
    body = other.encode().replace(b'"tick_ms":2000', b'"tick_ms":"soon"')
    with pytest.raises(MessageError) as info:
        Job.decode(body, plans)
    assert info.value.raw == body
    assert str(info.value) == "job is malformed: Expected `int`, got `str` - at `$.tick_ms`"


def test_a_plan_id_that_is_not_its_plans_is_refused_and_not_kept() -> None:
    plans = PlanCache()
    wrong = "0" * 16
    body = JOB.encode().replace(JOB.plan.plan_id.encode(), wrong.encode())
    with pytest.raises(MessageError) as info:
        Job.decode(body, plans)
    assert info.value.raw == body
    assert str(info.value) == (
        f"job is malformed: plan_id {wrong!r} is not the id of its plan ({JOB.plan.plan_id!r})"
    )
    assert len(plans) == 0
    # so a job naming another plan with that id is not read with this one
    other = Job(
        METER, 1, 2, Plan.of((ReadRequest(3, 0, 1),), (Register("x", 0, 3, DataType.INT16),))
    )
    forged = other.encode().replace(other.plan.plan_id.encode(), wrong.encode())
    with pytest.raises(MessageError):
        Job.decode(forged, plans)
    assert Job.decode(JOB.encode(), plans) == JOB


def test_a_plan_is_known_by_its_content_not_its_spelling() -> None:
    plans = PlanCache()
    spelled = JOB.encode().replace(
        b'"registers":[["voltageL1",0,4,"V","float32","CDAB",0.1]]',
        b'"registers": [{"name": "voltageL1", "address": 0, "function_code": 4, "unit": "V", '
        b'"order": "CDAB", "scale": 0.1, "data_type": 3}]',
    )
    assert spelled != JOB.encode()
    assert Job.decode(spelled, plans) == JOB
    assert Job.decode(JOB.encode(), plans).plan is Job.decode(spelled, plans).plan


def test_the_plan_cache_keeps_the_most_recently_used_plans() -> None:
    plans = PlanCache(size=2)
    made = [Plan.build((Register(f"r{i}", i, 3, DataType.INT16),)) for i in range(3)]
    for plan in made:
        plans.add(plan)
    assert plans.get(made[0].plan_id) is None
    assert plans.get(made[1].plan_id) is made[1]
    plans.add(made[0])  # made[2] is now the least recently used
    assert plans.get(made[2].plan_id) is None
    assert plans.get(made[1].plan_id) is made[1]
    assert len(plans) == 2


V1_REGISTER = {
    "name": "voltageL1",
    "address": 0,
    "fc": 4,
    "type": "float32",
    "order": "CDAB",
    "unit": "V",
    "scale": 0.1,
}


def test_a_version_1_job_is_still_read() -> None:
    body = json.dumps(
        {
            "v": 1,
            "kind": "job",
            "meter": msgspec.to_builtins(METER),
            "tick_ms": JOB.tick_ms,
            "deadline_ms": JOB.deadline_ms,
            "requests": [[4, 0, 2]],
            "registers": [V1_REGISTER],
        }
    ).encode()
    assert Job.decode(body, PlanCache()) == JOB


# as version 2 wrote JOB
V2_JOB = (
    b'{"v":2,"kind":"job","meter":{"id":7,"host":"10.0.0.5","port":502,"unit_id":1,'
    b'"type":"sdm630","description":"hall"},"tick_ms":1700000000000,'
    b'"deadline_ms":1700000010000,"requests":[[4,0,2]],'
    b'"registers":[["voltageL1",0,4,"V","float32","CDAB",0.1]]}'
)


def test_a_version_2_job_is_still_read() -> None:
    plans = PlanCache()
    job = Job.decode(V2_JOB, plans)
    assert job == JOB
    # its plan is parsed once, as a worker may read only version 2 jobs for a while
    assert Job.decode(V2_JOB.replace(b'"id":7', b'"id":8'), plans).plan is job.plan
    assert len(plans) == 1
    assert job.plan.plan_id == JOB.plan.plan_id
    assert job.plan.decoders[0].decode([0x0000, 0x4566]) == ({"voltageL1": 368.0}, [])


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (V2_JOB.replace(b'"tick_ms"', b'"tock_ms"'), "job lacks the key 'tick_ms'"),
        (
            V2_JOB.replace(b"[[4,0,2]]", b"[[4,0]]"),
            "job is malformed: Expected `array` of length 3 - at `$.requests[0]`",
        ),
        (
            V2_JOB.replace(b'["voltageL1",0,4,', b'["voltageL1",0,5,'),
            "job is malformed: function_code 5 is not a read function code (1, 2, 3, 4)",
        ),
        (
            V2_JOB.replace(b'"port":502', b'"port":0'),
            "job is malformed: meter 7: port 0 is outside 1..65535",
        ),
    ],
)
def test_bad_version_2_job(body: bytes, reason: str) -> None:
    with pytest.raises(MessageError) as info:
        Job.decode(body, PlanCache())
    assert info.value.raw == body
    assert str(info.value) == reason


@FAST
@given(readings)
def test_reading_round_trip(reading: Reading) -> None:
    assert Reading.decode(reading.encode()) == reading


METER = Meter(7, "10.0.0.5", 502, 1, "sdm630", "hall")
REGISTER = Register("voltageL1", 0, 4, DataType.FLOAT32, Order.CDAB, "V", 0.1)
JOB = Job(
    METER, 1_700_000_000_000, 1_700_000_010_000, Plan.of((ReadRequest(4, 0, 2),), (REGISTER,))
)
READING = Reading(
    METER,
    1_700_000_000_000,
    {"voltageL1": 230.5},
    Status(up=False, error_code="timeout", error="boom", latency_ms=1.5, requests=2),
    ("currentL1",),
    {"powerL1": "timeout"},
)


def test_job_wire_format() -> None:
    plan = b'{"requests":[[4,0,2]],"registers":[["voltageL1",0,4,"V","float32","CDAB",0.1]]}'
    assert JOB.encode() == (
        b'{"v":3,"kind":"job","meter":{"id":7,"host":"10.0.0.5","port":502,"unit_id":1,'
        b'"type":"sdm630","description":"hall"},"tick_ms":1700000000000,'
        b'"deadline_ms":1700000010000,"plan_id":"c025893beefc283f","plan":' + plan + b"}"
    )
    assert JOB.plan.encoded == plan
    assert JOB.plan.plan_id == hashlib.blake2b(plan, digest_size=8).hexdigest()
    assert JOB_VERSION == 3
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


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_reading_with_non_finite_value_is_not_encoded(value: float) -> None:
    reading = Reading(METER, 1, {"a": 1.0, "v": value}, Status(up=True))
    with pytest.raises(ValueError, match=r"^Out of range float values are not JSON compliant"):
        reading.encode()


def test_reading_with_large_finite_values_is_encoded() -> None:
    # their sum overflows, each of them does not
    reading = Reading(METER, 1, {"a": 1e308, "b": 1e308}, Status(up=True))
    assert Reading.decode(reading.encode()) == reading


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


def _plan(**changes: Any) -> bytes:
    """JOB with the plan's keys replaced: an unknown plan, as the plan id still names JOB's."""
    plan = json.loads(JOB.plan.encoded)
    for key, value in changes.items():
        if value is KeyError:
            del plan[key]
        else:
            plan[key] = value
    return _job(plan=plan)


def _reading(**changes: Any) -> bytes:
    return _changed(READING, **changes)


GOOD_REGISTER = {"name": "v", "address": 0, "function_code": 3, "data_type": "int16"}


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
        (_job(v=4), "job has schema version 4, this build reads 1, 2 and 3"),
        (_job(v=KeyError), "job has schema version None, this build reads 1, 2 and 3"),
        (_job(v="1"), "job has schema version '1', this build reads 1, 2 and 3"),
        (_job(v=True), "job has schema version True, this build reads 1, 2 and 3"),
        (_job(kind="reading"), "expected a job, got kind 'reading'"),
        (_job(kind=KeyError), "expected a job, got kind None"),
        (_job(tick_ms=KeyError), "job lacks the key 'tick_ms'"),
        (_job(meter=KeyError), "job lacks the key 'meter'"),
        (_job(plan_id=KeyError), "job lacks the key 'plan_id'"),
        (_job(plan=KeyError), "job lacks the key 'plan'"),
        (_plan(registers=KeyError), "job lacks the key 'registers'"),
        (_job(meter={"id": 1, "host": "h", "port": 502, "unit_id": 1}), "job lacks the key 'type'"),
        (
            _job(meter={"id": 1, "host": "h", "port": 70000, "unit_id": 1, "type": "t"}),
            "job is malformed: meter 1: port 70000 is outside 1..65535",
        ),
        (_job(tick_ms="soon"), "job is malformed: Expected `int`, got `str` - at `$.tick_ms`"),
        (_job(plan_id=7), "job is malformed: Expected `str`, got `int` - at `$.plan_id`"),
        (_job(plan=[1]), "job is malformed: Expected `object`, got `array` - at `$.plan`"),
        (
            _plan(requests=[[3, 0]]),
            "job is malformed: Expected `array` of length 3 - at `$.plan.requests[0]`",
        ),
        (
            _plan(requests=[[5, 0, 2]]),
            "job is malformed: request function code 5 is not a read (1, 2, 3, 4)",
        ),
        (
            _plan(requests=[[4, 0, 126]]),
            "job is malformed: request count 126 is outside 1..125 for function code 4",
        ),
        (
            _plan(requests=[[4, 65535, 2]]),
            "job is malformed: request address 65535 is outside 0..65534",
        ),
        (
            _plan(requests=[[3, 0, 2]]),
            "job is malformed: no planned request covers the register(s) voltageL1",
        ),
        (
            _plan(registers=[dict(GOOD_REGISTER, function_code=5)]),
            "job is malformed: function_code 5 is not a read function code (1, 2, 3, 4)",
        ),
        (
            _plan(registers=[{"name": "v", "address": 0, "data_type": "int16"}]),
            "job is malformed: register is missing the key 'function_code'",
        ),
        (
            _plan(registers=[GOOD_REGISTER, dict(GOOD_REGISTER, data_type="int99")]),
            "job is malformed: unknown data_type 'int99' (known: 1 int16, 2 int32, 3 float32, "
            "4 uint16, 5 uint32, 6 int64, 7 uint64, 8 float64, 9 bool, 10 string, 11 uint8_high, "
            "12 uint8_low, 13 int8_high, 14 int8_low)",
        ),
        (_plan(registers=["v"]), "job is malformed: register must be a list or an object, got str"),
        (
            _plan(registers=[None]),
            "job is malformed: register must be a list or an object, got NoneType",
        ),
        (
            _plan(registers=[["v", 0]]),
            "job is malformed: register row has 2 values, expected 3 to 14: name, address, "
            "function_code, unit, data_type, order, scale, offset, missing, poll_every, length, "
            "enum, bits, scale_register",
        ),
        (
            _plan(registers=[["v", 0, 3, "", "int16", "ABCD", 0]]),
            "job is malformed: scale 0.0 must be a finite number other than 0",
        ),
    ],
)
def test_bad_job(body: bytes, reason: str) -> None:
    with pytest.raises(MessageError) as info:
        Job.decode(body, PlanCache())
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
        (
            _reading(fields=[1.0]),
            "reading is malformed: Expected `object`, got `array` - at `$.fields`",
        ),
        (
            _reading(fields={"a": "high"}),
            "reading is malformed: Expected `float`, got `str` - at `$.fields[...]`",
        ),
        (
            _reading(status=None),
            "reading is malformed: Expected `object`, got `null` - at `$.status`",
        ),
        (
            _reading(errors=["x"]),
            "reading is malformed: Expected `object`, got `array` - at `$.errors`",
        ),
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
            # a text is not a number, however it reads
            _reading(fields={"a": 1.0, "b": "-inf"}),
            "reading is malformed: Expected `float`, got `str` - at `$.fields[...]`",
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


def test_a_job_carries_only_the_gateway_settings_that_are_not_defaults() -> None:
    assert b"gateway" not in JOB.encode()  # the wire format above: defaults leave no trace
    paced = replace(JOB, gateway=Gateway(pause_between_requests_ms=50, framing="rtu-over-tcp"))
    body = paced.encode()
    assert json.loads(body)["gateway"] == {
        "pause_between_requests_ms": 50,
        "framing": "rtu-over-tcp",
    }
    assert Job.decode(body, PlanCache()) == paced
    # defaults spelled anew (as a row gives them) leave no trace either
    row_defaults = Gateway.from_dict({"max_connections": 1, "framing": "".join(["t", "cp"])})
    assert replace(JOB, gateway=row_defaults).encode() == JOB.encode()
    # a job without the key (from a scheduler older than the gateways table) has the defaults
    assert Job.decode(JOB.encode(), PlanCache()).gateway == Gateway()


@pytest.mark.parametrize(
    ("gateway", "reason"),
    [
        ({"max_connections": 0}, "max_connections 0 is outside 1..16"),
        ({"request_timeout_ms": 5}, "request_timeout_ms 5 is outside 10..60000"),
        ({"max_read_registers": 126}, "max_read_registers 126 is outside 1..125"),
        ({"framing": "rtu"}, "Invalid enum value 'rtu' - at `$.gateway.framing`"),
        ({"pause_after_connect_ms": "1"}, "Expected `int`"),
    ],
)
def test_bad_gateway_settings_make_a_malformed_job(gateway: dict[str, Any], reason: str) -> None:
    data = json.loads(JOB.encode())
    data["gateway"] = gateway
    body = json.dumps(data).encode()
    with pytest.raises(MessageError) as info:
        Job.decode(body, PlanCache())
    assert info.value.reason.startswith("job is malformed: ")
    assert reason in info.value.reason
    assert info.value.raw == body


def test_gateway_settings_from_a_row_take_null_as_the_default() -> None:
    row = {"host": "h", "port": 502, "max_connections": 2, "request_timeout_ms": None}
    assert Gateway.from_dict(row) == Gateway(max_connections=2)
    assert Gateway().timeout_s(1.5) == 1.5
    assert Gateway(request_timeout_ms=250).timeout_s(1.5) == 0.25


GATEWAY_STATUS = GatewayStatus(
    host="10.0.0.5",
    port=502,
    tick_ms=1_700_000_000_000,
    period_ms=10_000,
    meters=4,
    requests=16,
    busy_ms=812.5,
    late=1,
)


def test_gateway_status_wire_format_and_round_trip() -> None:
    body = GATEWAY_STATUS.encode()
    assert body == (
        b'{"v":1,"kind":"gateway_status","host":"10.0.0.5","port":502,'
        b'"tick_ms":1700000000000,"period_ms":10000,"connections":1,"meters":4,'
        b'"requests":16,"busy_ms":812.5,"late":1}'
    )
    assert GatewayStatus.decode(body) == GATEWAY_STATUS
    assert decode_result(body) == GATEWAY_STATUS
    assert decode_result(READING.encode()) == READING
    assert GATEWAY_STATUS.name == "10.0.0.5:502"
    assert GATEWAY_STATUS.utilisation == 0.08125


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"v":2,"kind":"gateway_status"}', "this build reads 1"),
        (b'{"v":1,"kind":"gateway_status","host":"h"}', "lacks the key 'port'"),
        (b'{"v":1,"kind":"nothing"}', "expected a reading, got kind 'nothing'"),
        (b"not json", "reading is not valid JSON"),
    ],
)
def test_bad_readings_queue_messages(body: bytes, reason: str) -> None:
    with pytest.raises(MessageError) as info:
        decode_result(body)
    assert reason in info.value.reason
    assert info.value.raw == body
