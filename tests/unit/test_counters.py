"""Counter restarts flagged by the writer (writer.counters) and how they are written."""

from __future__ import annotations

import pytest

from emm.messages import Meter, Reading, Status
from emm.registers import DataType, Register
from writer.counters import CounterWatch
from writer.lines import reading_lines

pytestmark = pytest.mark.timeout(10)

METER = Meter(3, "h", 502, 1, "sdm630")


def reading(tick_ms: int, **fields: float) -> Reading:
    return Reading(
        METER, tick_ms, dict(fields), Status(True), counters=("importEnergy", "exportEnergy")
    )


def test_a_counter_that_goes_down_is_flagged_once() -> None:
    watch = CounterWatch()
    assert watch.check(reading(1000, importEnergy=10.0, exportEnergy=1.0, power=5.0)) == []
    assert watch.check(reading(2000, importEnergy=10.5, exportEnergy=1.0, power=1.0)) == []
    assert watch.check(reading(3000, importEnergy=0.25, exportEnergy=1.0, power=0.5)) == [
        "importEnergy"
    ]
    assert watch.check(reading(4000, importEnergy=0.5, exportEnergy=0.0, power=0.5)) == [
        "exportEnergy"
    ]


def test_late_and_repeated_readings_are_not_compared() -> None:
    watch = CounterWatch()
    watch.check(reading(2000, importEnergy=10.0))
    assert watch.check(reading(1000, importEnergy=9.0)) == []  # older tick, delivered late
    assert watch.check(reading(2000, importEnergy=10.0)) == []  # the same tick again
    assert watch.check(reading(3000, importEnergy=9.5)) == ["importEnergy"]


def test_a_missing_counter_keeps_its_last_value() -> None:
    watch = CounterWatch()
    watch.check(reading(1000, importEnergy=10.0))
    assert watch.check(reading(2000)) == []
    assert watch.check(reading(3000, importEnergy=2.0)) == ["importEnergy"]


def test_the_flag_is_written_in_meter_status() -> None:
    lines = reading_lines(reading(5000, importEnergy=0.5), ["importEnergy"])
    assert lines[1] == (
        'meter_status,meter_id=3,type=sdm630 up=true,error_code="",latency_ms=0.0,'
        "requests=0i,values=1i,missing=0i,errors=0i,counter_resets=1i,"
        'counter_reset_fields="importEnergy" 5000'
    )


@pytest.mark.parametrize(
    ("unit", "counter"),
    [
        ("kWh", True),
        ("Wh", True),
        ("kvarh", True),
        ("VAh", True),
        ("Ah", True),
        ("W", False),
        ("V", False),
        ("", False),
        ("kW", False),
    ],
)
def test_counters_are_known_by_their_unit(unit: str, counter: bool) -> None:
    assert Register("x", 0, 4, DataType.FLOAT32, unit=unit).is_counter is counter
