"""A gateway's load per tick (`worker.budget`): what its status reports, and the warning for a
gateway over 80 %."""

from __future__ import annotations

import logging

import pytest

from emm.messages import Gateway, GatewayStatus, Job, Meter
from emm.plan import Plan
from emm.registers import DataType, Register
from worker.budget import REPORT_AFTER_MS, STUCK_AFTER_MS, Budget, overload_warning

pytestmark = pytest.mark.timeout(10)

PLAN = Plan.build((Register("r0", 0, 3, DataType.UINT16),))
TICK_MS = 1_700_000_000_000


def job(meter_id: int, tick_ms: int = TICK_MS, connections: int = 1) -> Job:
    meter = Meter(meter_id, "192.0.2.9", 502, meter_id, "t")
    return Job(meter, tick_ms, tick_ms + 2_000, PLAN, Gateway(max_connections=connections))


def status(**fields: int | float) -> GatewayStatus:
    base: dict = dict(host="192.0.2.9", port=502, tick_ms=TICK_MS, period_ms=2_000)
    return GatewayStatus(**{**base, **fields})


def test_a_tick_is_reported_once_it_is_over_and_nothing_of_it_still_reads() -> None:
    budget = Budget()
    load = budget.gateway("192.0.2.9", 502)
    for meter_id in (1, 2, 3):
        load.begin(job(meter_id))
        load.end(job(meter_id), requests=4, busy_s=0.1)
    load.late(job(4))
    load.begin(job(5))  # still reading
    over = TICK_MS + 2_000 + REPORT_AFTER_MS
    assert budget.due(over - 1) == []
    assert budget.due(over) == []  # job 5 still reads
    load.end(job(5), requests=1, busy_s=0.25)
    load.begin(job(1, TICK_MS + 2_000))  # the next tick has begun
    [done] = budget.due(over)
    assert done == status(meters=4, requests=13, busy_ms=550.0, late=1)
    assert done.utilisation == pytest.approx(0.275)
    assert budget.due(over) == []
    # a job of the reported tick counted now would overwrite its point: it is left out
    load.late(job(6))
    load.end(job(1, TICK_MS + 2_000), requests=1, busy_s=0.1)
    [following] = budget.due(over + 2_000)
    assert (following.tick_ms, following.meters, following.late) == (TICK_MS + 2_000, 1, 0)
    assert budget.due(over + 60_000) == []


def test_a_read_hung_past_every_timeout_does_not_keep_its_tick_forever() -> None:
    budget = Budget()
    load = budget.gateway("192.0.2.9", 502)
    load.begin(job(1))
    assert budget.due(TICK_MS + 2_000 + STUCK_AFTER_MS - 1) == []  # still reading
    [done] = budget.due(TICK_MS + 2_000 + STUCK_AFTER_MS)
    assert (done.meters, done.requests) == (1, 0)


def test_utilisation_counts_every_connection_the_gateway_allows() -> None:
    assert status(busy_ms=1_800).utilisation == 0.9
    assert status(busy_ms=1_800, connections=2).utilisation == 0.45


def test_the_warning_names_the_gateway_its_meters_and_what_would_fit() -> None:
    assert overload_warning(status(meters=4, busy_ms=1_600), {1, 2, 3, 4}) is None
    warning = overload_warning(status(meters=4, busy_ms=1_840, late=2), {1, 2, 3, 4})
    assert warning == (
        "gateway 192.0.2.9:502 busy 92% of tick 2023-11-14T22:13:20+00:00 (1840 ms of 2000 ms "
        "over 1 connection(s)) reading 4 meter(s) (1, 2, 3, 4), 2 more dropped as late (all of "
        "them would need about 138%); about 3 such meter(s) fit in 80% of the period, or a "
        "period of 4 s would fit all 6"
    )


def test_a_gateway_saturated_at_half_a_tick_is_warned_about() -> None:
    # jobs waiting past half a tick are dropped, so a saturated gateway is busy about half of it
    assert overload_warning(status(meters=4, busy_ms=800, late=1), {1, 2, 3, 4}) is None
    warning = overload_warning(status(meters=4, busy_ms=1_000, late=4), {1, 2, 3, 4})
    assert warning == (
        "gateway 192.0.2.9:502 busy 50% of tick 2023-11-14T22:13:20+00:00 (1000 ms of 2000 ms "
        "over 1 connection(s)) reading 4 meter(s) (1, 2, 3, 4), 4 more dropped as late (all of "
        "them would need about 100%); about 6 such meter(s) fit in 80% of the period, or a "
        "period of 3 s would fit all 8"
    )


def test_a_busy_gateway_is_warned_about_once_an_hour(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    budget = Budget(clock=lambda: now[0])
    load = budget.gateway("192.0.2.9", 502)
    with caplog.at_level(logging.WARNING):
        for n in range(3):
            tick_ms = TICK_MS + n * 2_000
            load.begin(job(1, tick_ms))
            load.end(job(1, tick_ms), requests=4, busy_s=1.9)
            budget.due(tick_ms + 2_000 + REPORT_AFTER_MS)
            now[0] += 1_800.0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # at 0 s and at 3,600 s
    assert all(w.startswith("gateway 192.0.2.9:502 busy 95% ") for w in warnings)
