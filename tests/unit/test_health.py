"""Offline devices and their backoff (a device's `Health`), driven tick by tick."""

from __future__ import annotations

import logging

import pytest

from emm.messages import Meter
from worker.health import Health, OfflinePolicy

pytestmark = pytest.mark.timeout(10)

METER = Meter(7, "192.0.2.7", 502, 3, "sdm630")
PERIOD_MS = 10_000


def health_of(offline_after_ticks: int, backoff_max_s: float) -> Health:
    return Health(OfflinePolicy(offline_after_ticks, backoff_max_s))


def polled_ticks(health: Health, ticks: int, answers_from: int | None = None) -> list[int]:
    """Run `ticks` ticks; the device answers from tick `answers_from` on. Returns polled ticks."""
    polled = []
    for n in range(ticks):
        tick_ms = n * PERIOD_MS
        if health.skip_reason(tick_ms) is None:
            polled.append(n)
            answered = answers_from is not None and n >= answers_from
            health.record(METER, tick_ms, PERIOD_MS, answered, "unreachable")
    return polled


def test_a_dead_device_is_polled_with_capped_exponential_backoff() -> None:
    health = health_of(offline_after_ticks=3, backoff_max_s=80)
    # 3 failed ticks, then waits of 2, 4, 8 ticks, then the 80 s cap (8 ticks).
    assert polled_ticks(health, 40) == [0, 1, 2, 4, 8, 16, 24, 32]
    assert health.offline


def test_it_comes_back_at_the_first_answer_and_is_polled_every_tick_again() -> None:
    health = health_of(offline_after_ticks=3, backoff_max_s=80)
    # Answers from tick 9 on: the next poll after that is tick 16, and from then every tick.
    assert polled_ticks(health, 20, answers_from=9) == [0, 1, 2, 4, 8, 16, 17, 18, 19]
    assert not health.offline


def test_fewer_failures_than_the_threshold_never_skip() -> None:
    health = health_of(offline_after_ticks=3, backoff_max_s=80)
    for n, answered in enumerate([False, False, True, False, False, True]):
        assert health.skip_reason(n * PERIOD_MS) is None
        health.record(METER, n * PERIOD_MS, PERIOD_MS, answered, "timeout")
    assert not health.offline


def test_the_skip_reason_and_the_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    health = health_of(offline_after_ticks=2, backoff_max_s=60)
    with caplog.at_level(logging.INFO, logger="worker.health"):
        for n in range(2):
            health.record(METER, n * PERIOD_MS, PERIOD_MS, False, "timeout")
        assert health.skip_reason(2 * PERIOD_MS) == (
            "offline after 2 failed ticks (timeout); next try in 10 s"
        )
        health.record(METER, 3 * PERIOD_MS, PERIOD_MS, True, "")
    assert [r.getMessage() for r in caplog.records] == [
        "meter 7 (192.0.2.7:502 unit 3) offline after 2 failed ticks (timeout); polling it "
        "with backoff up to 60 s",
        "meter 7 (192.0.2.7:502 unit 3) answers again after 20 s offline",
    ]
