"""Tick time as the worker's parts use it: the wall clock in milliseconds, a tick for a log line."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now_ms() -> int:
    """The wall clock, in milliseconds since the epoch (the unit of a job's tick)."""
    return int(time.time() * 1000)


def iso(ts_ms: int) -> str:
    """`ts_ms` as an ISO 8601 UTC time to the second, for log lines."""
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).isoformat(timespec="seconds")
