"""Cron schedules: standard 5-field expressions, or 6 fields with a leading seconds field.

`*/10 * * * * *` ticks every 10 seconds; `*/5 * * * *` every 5 minutes. Times are UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime

from croniter import croniter

from emm.errors import ConfigError


class CronSchedule:
    """The tick times of a cron expression."""

    def __init__(self, expression: str) -> None:
        self.expression = " ".join(expression.split())
        fields = len(self.expression.split())
        if fields not in (5, 6):
            raise ConfigError(
                f"EMM_READ_CRON={expression!r} has {fields} fields; expected 5 "
                "(minute hour day month weekday) or 6 (a leading seconds field)"
            )
        self.has_seconds = fields == 6
        if not croniter.is_valid(self.expression, second_at_beginning=self.has_seconds):
            raise ConfigError(f"EMM_READ_CRON={expression!r} is not a valid cron expression")

    def next_after(self, ts_ms: int) -> int:
        """The first tick strictly after `ts_ms` (milliseconds since the epoch)."""
        start = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
        it = croniter(self.expression, start, second_at_beginning=self.has_seconds)
        return round(it.get_next(float) * 1000)

    def period_after(self, tick_ms: int) -> int:
        """Milliseconds from `tick_ms` to the tick after it: the life of that tick's jobs."""
        return self.next_after(tick_ms) - tick_ms
