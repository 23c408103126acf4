"""Counter restarts flagged by the writer (writer.counters) and how they are written."""

from __future__ import annotations

import pytest

from emm.messages import Meter, Reading, Status
from emm.registers import DataType, Register
from writer.counters import HISTORY, CounterWatch, increment, tick_counter
from writer.lines import delta_lines, reading_lines

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


# --- energy deltas (writer.counters.observe, writer.lines.delta_lines) ---


def deltas(watch: CounterWatch, r: Reading) -> list[tuple[int, dict[str, float], int]]:
    return [(d.tick_ms, d.values, d.gap_ticks) for d in watch.observe(r).deltas]


def every_second() -> CounterWatch:
    return CounterWatch(tick_counter(lambda t: (t // 1000 + 1) * 1000))


@pytest.mark.parametrize(
    ("previous", "current", "expected"),
    [
        (123456.77, 123456.78, 0.01),
        (0.1, 0.3, 0.2),
        (10.0, 10.0, 0.0),
        (10.5, 0.25, 0.25),  # restarted from zero: what it counted since
        (4294967.295, 4294967.296, 0.001),
        (1e12, 1e12 + 1, 1.0),
    ],
)
def test_increment_is_exact_to_the_counters_digits(
    previous: float, current: float, expected: float
) -> None:
    assert increment(previous, current) == expected


def test_the_first_reading_gives_no_delta_then_each_gives_its_increment() -> None:
    watch = every_second()
    assert deltas(watch, reading(1000, importEnergy=10.0, exportEnergy=1.0)) == []
    assert deltas(watch, reading(2000, importEnergy=10.5, exportEnergy=1.0)) == [
        (2000, {"importEnergy": 0.5, "exportEnergy": 0.0}, 0)
    ]


def test_a_reset_contributes_the_new_value() -> None:
    watch = every_second()
    watch.observe(reading(1000, importEnergy=10.0))
    seen = watch.observe(reading(2000, importEnergy=0.25))
    assert seen.resets == ["importEnergy"]
    assert [(d.tick_ms, d.values) for d in seen.deltas] == [(2000, {"importEnergy": 0.25})]


def test_a_gap_goes_to_the_first_tick_after_it_and_is_counted() -> None:
    watch = every_second()
    watch.observe(reading(1000, importEnergy=10.0))
    assert deltas(watch, reading(5000, importEnergy=14.0)) == [(5000, {"importEnergy": 4.0}, 3)]


def test_a_reading_delivered_twice_gives_the_same_point() -> None:
    watch = every_second()
    first = [reading(t * 1000, importEnergy=10.0 + t) for t in range(1, 5)]
    points = [deltas(watch, r) for r in first]
    assert deltas(watch, first[1]) == points[1]  # again, after later ones
    assert deltas(watch, first[3]) == points[3]


def test_a_late_reading_rewrites_the_next_ticks_point() -> None:
    watch = every_second()
    watch.observe(reading(1000, importEnergy=10.0))
    assert deltas(watch, reading(3000, importEnergy=12.0)) == [(3000, {"importEnergy": 2.0}, 1)]
    assert deltas(watch, reading(2000, importEnergy=11.5)) == [
        (2000, {"importEnergy": 1.5}, 0),
        (3000, {"importEnergy": 0.5}, 0),
    ]


def test_a_reading_older_than_the_history_gives_nothing() -> None:
    watch = every_second()
    for t in range(10, 10 + HISTORY):
        watch.observe(reading(t * 1000, importEnergy=float(t)))
    assert deltas(watch, reading(5000, importEnergy=5.0)) == []


def test_restored_history_continues_the_deltas() -> None:
    watch = every_second()
    watch.restore([(3, 2000, {"importEnergy": 11.0}), (3, 1000, {"importEnergy": 10.0})])
    assert deltas(watch, reading(3000, importEnergy=11.25)) == [(3000, {"importEnergy": 0.25}, 0)]
    # a redelivery of a reading already stored before the restart gives its point again
    assert deltas(watch, reading(2000, importEnergy=11.0)) == [(2000, {"importEnergy": 1.0}, 0)]


def test_delta_lines() -> None:
    watch = every_second()
    watch.observe(reading(1000, importEnergy=10.0))
    seen = watch.observe(reading(4000, importEnergy=10.5, exportEnergy=2.0))
    assert delta_lines(METER, seen.deltas) == [
        "energy_delta,meter_id=3,type=sdm630 importEnergy=0.5,gap_ticks=2i 4000"
    ]
