"""Offline devices: after a number of failed ticks a device is polled with capped exponential
backoff instead of every tick, so a dead or sleeping device (an inverter at night) costs neither
time nor log lines; the first answer brings it back at once.

State is per worker process and per device (host, port, unit id).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from emm.messages import Meter

log = logging.getLogger(__name__)

DeviceKey = tuple[str, int, int]


def device_key(meter: Meter) -> DeviceKey:
    return (meter.host, meter.port, meter.unit_id)


@dataclass
class DeviceState:
    failed_ticks: int = 0
    offline_since_ms: int | None = None
    backoff_s: float = 0.0
    next_try_ms: int = 0
    last_error: str = ""


class DeviceHealth:
    """Decides whether a device is polled this tick, and tracks its failures."""

    def __init__(self, offline_after_ticks: int, backoff_max_s: float) -> None:
        self.offline_after_ticks = offline_after_ticks
        self.backoff_max_s = backoff_max_s
        self._states: dict[DeviceKey, DeviceState] = {}

    def skip_reason(self, meter: Meter, tick_ms: int) -> str | None:
        """Why the device is not polled at `tick_ms`, or None when it should be read."""
        state = self._states.get(device_key(meter))
        if state is None or state.offline_since_ms is None or tick_ms >= state.next_try_ms:
            return None
        wait_s = (state.next_try_ms - tick_ms) / 1000
        return (
            f"offline after {state.failed_ticks} failed ticks ({state.last_error}); "
            f"next try in {wait_s:.0f} s"
        )

    def record(
        self, meter: Meter, tick_ms: int, period_ms: int, answered: bool, error: str
    ) -> None:
        """Account for the read of `meter` at `tick_ms`; logs going offline and coming back."""
        key = device_key(meter)
        state = self._states.get(key)
        if answered:
            if state is not None and state.offline_since_ms is not None:
                down_s = (tick_ms - state.offline_since_ms) / 1000
                log.info(
                    "meter %d (%s:%d unit %d) answers again after %.0f s offline",
                    meter.id,
                    meter.host,
                    meter.port,
                    meter.unit_id,
                    down_s,
                )
            self._states.pop(key, None)
            return
        if state is None:
            state = self._states[key] = DeviceState()
        state.failed_ticks += 1
        state.last_error = error
        if state.offline_since_ms is None:
            if state.failed_ticks < self.offline_after_ticks:
                return
            state.offline_since_ms = tick_ms
            state.backoff_s = min(2 * period_ms / 1000, self.backoff_max_s)
            log.warning(
                "meter %d (%s:%d unit %d) offline after %d failed ticks (%s); polling it "
                "with backoff up to %.0f s",
                meter.id,
                meter.host,
                meter.port,
                meter.unit_id,
                state.failed_ticks,
                error,
                self.backoff_max_s,
            )
        else:
            state.backoff_s = min(state.backoff_s * 2, self.backoff_max_s)
        state.next_try_ms = tick_ms + int(state.backoff_s * 1000)

    def is_offline(self, meter: Meter) -> bool:
        state = self._states.get(device_key(meter))
        return state is not None and state.offline_since_ms is not None
