"""Offline devices: after a number of failed ticks a device is polled with capped exponential
backoff instead of every tick, so a dead or sleeping device (an inverter at night) costs neither
time nor log lines; the first answer brings it back at once. A tick fails when the device did
not answer at all: no connection, timeouts, or its gateway's exception 10 or 11 (an exception
answer from the device itself counts as an answer).

Between ticks `silent` says whether the device's last request went unanswered: the reader
gives such a device a short budget while other devices wait for its gateway.

State is per worker process and per device (host, port, unit id): each `Device` has its `Health`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from emm.log import context
from emm.messages import Meter
from emm.text import quote

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OfflinePolicy:
    """When a device counts as offline, and how long its pauses between polls grow."""

    offline_after_ticks: int
    backoff_max_s: float


class Health:
    """One device's failed ticks: whether it is polled this tick, and going offline and back."""

    __slots__ = (
        "backoff_s",
        "failed_ticks",
        "last_error",
        "next_try_ms",
        "offline_since_ms",
        "policy",
        "silent",
    )

    def __init__(self, policy: OfflinePolicy) -> None:
        self.policy = policy
        self.silent = False  # the last request got no answer (set by the reader)
        self._reset()

    def _reset(self) -> None:
        self.failed_ticks = 0
        self.offline_since_ms: int | None = None
        self.backoff_s = 0.0
        self.next_try_ms = 0
        self.last_error = ""

    @property
    def offline(self) -> bool:
        """Whether the device failed enough ticks in a row to be polled with backoff."""
        return self.offline_since_ms is not None

    def skip_reason(self, tick_ms: int) -> str | None:
        """Why the device is not polled at `tick_ms`, or None when it should be read."""
        if self.offline_since_ms is None or tick_ms >= self.next_try_ms:
            return None
        wait_s = (self.next_try_ms - tick_ms) / 1000
        return (
            f"offline after {self.failed_ticks} failed ticks ({self.last_error}); "
            f"next try in {wait_s:.0f} s"
        )

    def record(
        self, meter: Meter, tick_ms: int, period_ms: int, answered: bool, error: str
    ) -> None:
        """Account for the read of `meter` at `tick_ms`; logs going offline and coming back."""
        if answered:
            if self.offline_since_ms is not None:
                down_s = (tick_ms - self.offline_since_ms) / 1000
                log.info(
                    "meter %d (%s:%d unit %d) answers again after %.0f s offline",
                    meter.id,
                    quote(meter.host),
                    meter.port,
                    meter.unit_id,
                    down_s,
                    extra=context(meter_id=meter.id, gateway=f"{meter.host}:{meter.port}"),
                )
            self._reset()
            return
        self.failed_ticks += 1
        self.last_error = error
        backoff_max_s = self.policy.backoff_max_s
        if self.offline_since_ms is None:
            if self.failed_ticks < self.policy.offline_after_ticks:
                return
            self.offline_since_ms = tick_ms
            self.backoff_s = min(2 * period_ms / 1000, backoff_max_s)
            log.warning(
                "meter %d (%s:%d unit %d) offline after %d failed ticks (%s); polling it "
                "with backoff up to %.0f s",
                meter.id,
                quote(meter.host),
                meter.port,
                meter.unit_id,
                self.failed_ticks,
                error,
                backoff_max_s,
                extra=context(
                    meter_id=meter.id,
                    gateway=f"{meter.host}:{meter.port}",
                    tick_ms=tick_ms,
                    error_code=error,
                ),
            )
        else:
            self.backoff_s = min(self.backoff_s * 2, backoff_max_s)
        self.next_try_ms = tick_ms + int(self.backoff_s * 1000)
