"""emm.schedule: tick times of 5- and 6-field cron expressions from an injected timestamp."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emm.errors import ConfigError
from emm.schedule import CronSchedule

pytestmark = pytest.mark.timeout(30)

T0 = 1_700_000_000_000  # 2023-11-14 22:13:20.000 UTC, on a 10-s boundary, 20 s past a minute


@pytest.mark.parametrize(
    ("expression", "ts_ms", "next_ms"),
    [
        ("*/10 * * * * *", T0, T0 + 10_000),  # strictly after a tick
        ("*/10 * * * * *", T0 + 1, T0 + 10_000),
        ("*/10 * * * * *", T0 + 3_500, T0 + 10_000),
        ("*/10 * * * * *", T0 + 9_999, T0 + 10_000),
        ("*/10 * * * * *", T0 + 10_000, T0 + 20_000),
        ("  */10  *  * * * *  ", T0 + 1, T0 + 10_000),  # extra spaces are fine
        ("* * * * * *", T0 + 250, T0 + 1_000),
        ("*/5 * * * *", T0, T0 + 100_000),  # 22:13:20 -> 22:15:00
        ("*/5 * * * *", T0 + 100_000, T0 + 400_000),  # 22:15:00 -> 22:20:00
        ("*/5 * * * *", T0 + 99_999, T0 + 100_000),
        ("* * * * *", T0, T0 + 40_000),  # 22:13:20 -> 22:14:00
        ("0 0 * * *", T0, 1_700_006_400_000),  # -> 2023-11-15 00:00:00
        ("30 * * * * *", T0, T0 + 10_000),  # second 30 of the minute
        ("0 */2 * * * *", T0, T0 + 40_000),  # 22:14:00
    ],
)
def test_next_after(expression: str, ts_ms: int, next_ms: int) -> None:
    assert CronSchedule(expression).next_after(ts_ms) == next_ms


@pytest.mark.parametrize(
    ("expression", "tick_ms", "period_ms"),
    [
        ("*/10 * * * * *", T0, 10_000),
        ("*/10 * * * * *", T0 + 4_000, 6_000),
        ("*/5 * * * *", T0 + 100_000, 300_000),
        ("* * * * *", T0 + 40_000, 60_000),
        ("0,15 * * * * *", T0 + 40_000, 15_000),  # 22:14:00 -> 22:14:15
        ("0,15 * * * * *", T0 + 55_000, 45_000),  # 22:14:15 -> 22:15:00
    ],
)
def test_period_after(expression: str, tick_ms: int, period_ms: int) -> None:
    assert CronSchedule(expression).period_after(tick_ms) == period_ms


@pytest.mark.parametrize(
    ("expression", "ts_ms", "previous_ms", "fires"),
    [
        ("*/10 * * * * *", T0, T0 - 10_000, True),
        ("*/10 * * * * *", T0 + 4_000, T0, False),
        ("*/10 * * * * *", T0 + 1, T0, False),
        ("*/5 * * * *", T0 + 60_000, T0 - 200_000, False),  # 22:14:20, after 22:10:00
        ("0,15 * * * * *", T0 + 55_000, T0 + 40_000, True),  # 22:14:15, after 22:14:00
        ("0,15 * * * * *", T0 + 40_000, T0 - 5_000, True),  # 22:14:00, after 22:13:15
    ],
)
def test_previous_before_and_fires_at(
    expression: str, ts_ms: int, previous_ms: int, fires: bool
) -> None:
    schedule = CronSchedule(expression)
    assert schedule.previous_before(ts_ms) == previous_ms
    assert schedule.fires_at(ts_ms) is fires


@pytest.mark.parametrize(
    ("expression", "has_seconds", "normalised"),
    [
        ("*/5 * * * *", False, "*/5 * * * *"),
        ("*/10 * * * * *", True, "*/10 * * * * *"),
        ("\t0  *\t* * *\n", False, "0 * * * *"),
    ],
)
def test_expression_shape(expression: str, has_seconds: bool, normalised: str) -> None:
    schedule = CronSchedule(expression)
    assert schedule.has_seconds is has_seconds
    assert schedule.expression == normalised


@settings(max_examples=200, deadline=None)
@given(st.integers(10**12, 4 * 10**12))
def test_ten_second_ticks_are_the_next_boundary(ts_ms: int) -> None:
    schedule = CronSchedule("*/10 * * * * *")
    expected = (ts_ms // 10_000 + 1) * 10_000
    assert schedule.next_after(ts_ms) == expected
    assert schedule.period_after(expected) == 10_000


@settings(max_examples=200, deadline=None)
@given(st.integers(10**12, 4 * 10**12))
def test_five_minute_ticks_are_the_next_boundary(ts_ms: int) -> None:
    assert CronSchedule("*/5 * * * *").next_after(ts_ms) == (ts_ms // 300_000 + 1) * 300_000


FIELDS_HINT = "expected 5 (minute hour day month weekday) or 6 (a leading seconds field)"
NOT_CRON = f"not a valid cron expression; {FIELDS_HINT}"


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("* * * *", f"EMM_READ_CRON='* * * *': has 4 fields; {FIELDS_HINT}"),
        ("* * * * * * *", f"EMM_READ_CRON='* * * * * * *': has 7 fields; {FIELDS_HINT}"),
        ("", f"EMM_READ_CRON='': has 0 fields; {FIELDS_HINT}"),
        ("   ", f"EMM_READ_CRON='   ': has 0 fields; {FIELDS_HINT}"),
        ("*/10", f"EMM_READ_CRON='*/10': has 1 fields; {FIELDS_HINT}"),
        ("61 * * * *", f"EMM_READ_CRON='61 * * * *': {NOT_CRON}"),
        ("a b c d e", f"EMM_READ_CRON='a b c d e': {NOT_CRON}"),
        ("*/10 * * * * x", f"EMM_READ_CRON='*/10 * * * * x': {NOT_CRON}"),
        ("60 * * * * *", f"EMM_READ_CRON='60 * * * * *': {NOT_CRON}"),
        ("* 24 * * *", f"EMM_READ_CRON='* 24 * * *': {NOT_CRON}"),
        ("0 0 31 2 *", "EMM_READ_CRON='0 0 31 2 *': never fires (no tick within 5 years)"),
        ("0 0 30 2 *", "EMM_READ_CRON='0 0 30 2 *': never fires (no tick within 5 years)"),
        ("0 0 0 31 4 *", "EMM_READ_CRON='0 0 0 31 4 *': never fires (no tick within 5 years)"),
    ],
)
def test_invalid_expressions(expression: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        CronSchedule(expression, setting="EMM_READ_CRON")
    assert str(info.value) == message


@pytest.mark.parametrize(
    "expression",
    ["0 0 29 2 *", "0 0 30 2 mon", "0 0 1 1 *", "59 23 31 12 *", "0 0 0 29 2 *"],
)
def test_rare_but_real_ticks_are_accepted(expression: str) -> None:
    CronSchedule(expression)  # 29 February, and day-or-weekday: Mondays in February


@pytest.mark.parametrize(
    ("setting", "expression", "prefix"),
    [
        ("BENCH_CRON", "* *", "BENCH_CRON='* *': has 2 fields"),
        ("EMM_STATUS_CRON", "x * * * *", "EMM_STATUS_CRON='x * * * *': not a valid"),
    ],
)
def test_errors_name_the_callers_setting(setting: str, expression: str, prefix: str) -> None:
    with pytest.raises(ConfigError) as info:
        CronSchedule(expression, setting=setting)
    assert str(info.value).startswith(prefix)
    assert "EMM_READ_CRON" not in str(info.value)


def test_without_a_setting_the_error_says_cron() -> None:
    with pytest.raises(ConfigError, match=r"^cron='\* \*': has 2 fields"):
        CronSchedule("* *")
