"""Cron schedules: standard 5-field expressions, or 6 fields with a leading seconds field.

`*/10 * * * * *` ticks every 10 seconds; `*/5 * * * *` every 5 minutes. Times are UTC.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from croniter import CroniterBadDateError, croniter

from emm.errors import ConfigError

# An expression with no tick this many years ahead is a mistake (`0 0 31 2 *`), not a plan:
# every date recurs within a year, and 29 February within four (until 2096).
NEVER_FIRES_YEARS = 5
FIELDS_HINT = "expected 5 (minute hour day month weekday) or 6 (a leading seconds field)"


class CronSchedule:
    """The tick times of a cron expression.

    `setting` names where the expression came from (`EMM_READ_CRON`, ...) in the ConfigError
    raised for one that has the wrong shape, does not parse, or never fires.
    """

    def __init__(self, expression: str, *, setting: str = "cron") -> None:
        self.expression = " ".join(expression.split())
        fields = len(self.expression.split())
        given = f"{setting}={expression!r}"
        if fields not in (5, 6):
            raise ConfigError(f"{given}: has {fields} fields; {FIELDS_HINT}")
        self.has_seconds = fields == 6
        if not croniter.is_valid(self.expression, second_at_beginning=self.has_seconds):
            raise ConfigError(f"{given}: not a valid cron expression; {FIELDS_HINT}")
        try:
            croniter(
                self.expression,
                time.time(),
                max_years_between_matches=NEVER_FIRES_YEARS,
                second_at_beginning=self.has_seconds,
            ).get_next(float)
        except CroniterBadDateError:
            raise ConfigError(
                f"{given}: never fires (no tick within {NEVER_FIRES_YEARS} years)"
            ) from None

    def next_after(self, ts_ms: int) -> int:
        """The first tick strictly after `ts_ms` (milliseconds since the epoch)."""
        start = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
        it = croniter(self.expression, start, second_at_beginning=self.has_seconds)
        return round(it.get_next(float) * 1000)

    def previous_before(self, ts_ms: int) -> int:
        """The last tick strictly before `ts_ms` (milliseconds since the epoch)."""
        start = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
        it = croniter(self.expression, start, second_at_beginning=self.has_seconds)
        return round(it.get_prev(float) * 1000)

    def fires_at(self, ts_ms: int) -> bool:
        """Whether `ts_ms` is one of the schedule's ticks."""
        return self.next_after(ts_ms - 1) == ts_ms

    def period_after(self, tick_ms: int) -> int:
        """Milliseconds from `tick_ms` to the tick after it: the life of that tick's jobs."""
        return self.next_after(tick_ms) - tick_ms
