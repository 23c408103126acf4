"""emm.plan: a meter type's plan, built once (requests, decoders, counters, id); the job builder
shares one per type."""

from __future__ import annotations

import hashlib

import pytest

from emm.codec import encode
from emm.config import LoadedConfig, MeterConfig
from emm.errors import ConfigError
from emm.messages import Meter
from emm.plan import Plan
from emm.planner import ReadLimits, ReadRequest, assign, plan
from emm.profiles import shipped_profile
from emm.registers import DataType, Register
from scheduler.jobs import MeterTick, PlanBook, build_jobs

pytestmark = pytest.mark.timeout(30)

VOLTAGE = Register("voltage", 0, 4, DataType.FLOAT32, unit="V")
ENERGY = Register("energy", 10, 4, DataType.FLOAT32, unit="kWh")
COIL = Register("relay", 3, 1, DataType.BOOL)


def test_build_plans_the_registers_within_the_limits() -> None:
    limits = ReadLimits(max_gap=4)
    built = Plan.build([VOLTAGE, ENERGY, COIL], limits)
    assert built.requests == tuple(plan([VOLTAGE, ENERGY, COIL], limits))
    assert built.requests == (ReadRequest(1, 3, 1), ReadRequest(4, 0, 2), ReadRequest(4, 10, 2))
    assert built.registers == (VOLTAGE, ENERGY, COIL)


def test_one_decoder_per_request_with_the_registers_it_covers() -> None:
    built = Plan.build([VOLTAGE, ENERGY, COIL], ReadLimits(max_gap=20))
    pairs = assign(built.requests, built.registers)
    assert [(d.start, d.count, d.registers) for d in built.decoders] == [
        (request.address, request.count, covered) for request, covered in pairs
    ]
    energy_and_voltage = built.decoders[1]
    words = encode(230.5, VOLTAGE) + [0] * 8 + encode(1234.5, ENERGY)
    assert energy_and_voltage.decode(words) == ({"voltage": 230.5, "energy": 1234.5}, [])


def test_counters_are_the_registers_with_counter_units() -> None:
    assert Plan.build([VOLTAGE, ENERGY, COIL]).counters == ("energy",)
    profile = shipped_profile("sdm630")
    assert profile is not None
    counters = Plan.build(profile.registers, profile.limits).counters
    assert counters == tuple(r.name for r in profile.registers if r.is_counter)
    assert counters  # the map has energy counters


def test_the_id_is_a_hash_of_the_encoding() -> None:
    built = Plan.build([VOLTAGE, ENERGY], ReadLimits(max_gap=4))
    assert built.encoded == (
        b'{"requests":[[4,0,2],[4,10,2]],"registers":[["voltage",0,4,"V"],["energy",10,4,"kWh"]]}'
    )
    assert built.plan_id == hashlib.blake2b(built.encoded, digest_size=8).hexdigest()


def test_equal_content_equal_plans_other_content_other_ids() -> None:
    limits = ReadLimits(max_gap=4)
    one, two = Plan.build([VOLTAGE, ENERGY], limits), Plan.build([VOLTAGE, ENERGY], limits)
    assert one is not two
    assert one == two
    assert hash(one) == hash(two)
    assert Plan.build([VOLTAGE, ENERGY], ReadLimits(max_gap=20)) != one  # one request, not two
    assert Plan.build([VOLTAGE], limits) != one


def test_decode_is_the_inverse_of_encoded() -> None:
    profile = shipped_profile("sdm630")
    assert profile is not None
    built = Plan.build(profile.registers, profile.limits)
    decoded = Plan.decode(built.encoded)
    assert decoded == built
    assert (decoded.requests, decoded.registers, decoded.counters) == (
        built.requests,
        built.registers,
        built.counters,
    )


@pytest.mark.parametrize(
    ("requests", "registers", "message"),
    [
        ((ReadRequest(6, 0, 1),), (), "request function code 6 is not a read (1, 2, 3, 4)"),
        ((ReadRequest(3, 0, 0),), (), "request count 0 is outside 1..125 for function code 3"),
        (
            (ReadRequest(1, 0, 2001),),
            (),
            "request count 2001 is outside 1..2000 for function code 1",
        ),
        ((ReadRequest(3, -1, 1),), (), "request address -1 is outside 0..65535"),
        ((ReadRequest(4, 0, 1),), (VOLTAGE,), "no planned request covers the register(s) voltage"),
    ],
)
def test_a_plan_that_cannot_be_read_is_refused(
    requests: tuple[ReadRequest, ...], registers: tuple[Register, ...], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Plan.of(requests, registers)
    assert str(info.value) == message


def test_jobs_of_one_type_share_one_plan_built_once(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[Plan] = []
    real = Plan.build

    def counting(registers: tuple[Register, ...], limits: ReadLimits | None = None) -> Plan:
        built.append(real(registers, limits))
        return built[-1]

    monkeypatch.setattr(Plan, "build", counting)
    sdm, other = (VOLTAGE, ENERGY), (COIL,)
    config = LoadedConfig(
        meters=[
            MeterConfig(Meter(i, f"10.0.0.{i}", 502, 1, "sdm"), sdm, ReadLimits())
            for i in range(1, 4)
        ]
        + [MeterConfig(Meter(9, "10.0.0.9", 502, 1, "relay"), other, ReadLimits())]
    )
    due = [MeterTick(mc, 120_000, 1, False) for mc in config.meters]
    jobs = build_jobs(config.meters, due, 60_000, PlanBook())
    assert len(built) == 2
    by_meter = {job.meter.id: job for job in jobs}
    assert by_meter[1].plan is by_meter[2].plan is by_meter[3].plan is built[0]
    assert by_meter[9].plan is built[1]
