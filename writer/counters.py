"""Energy counters: restarts flagged, and the increment since the meter's previous reading.

A counter that goes down means the meter restarted counting (a reboot, a reset, a replaced meter).
The reading is stored as the meter reported it and its `meter_status` point is flagged.

Every reading with counters also gives an `energy_delta` point (`writer.lines.delta_lines`): per
counter, what it counted since the meter's previous reading, stamped with the reading's tick, so
energy per hour, day or month is a `sum()`:
- a reset contributes the new value (what was counted since it), never a negative step;
- after missed ticks the whole increment goes to the first tick after the gap, and `gap_ticks`
  says how many ticks were missed (counted on `EMM_READ_CRON`);
- a meter's first reading ever gives no delta (nothing is known before it);
- the difference is rounded to 13 significant digits of the counter (`increment`), which removes
  float noise (123456.78 - 123456.77 = 0.010000000009) and keeps every digit a meter has.

Idempotent: a delta depends only on the reading and the one before it, kept per meter for the
last `HISTORY` ticks. A reading delivered twice gives the same point again; a late reading that
falls between two known ticks gives its own point and rewrites the next tick's one (same time,
same fields, so InfluxDB replaces it). A reading older than everything kept gives none: its
neighbours' points stay as they were written rather than be overwritten with a guess.

State survives a restart: `restore` rebuilds the last `HISTORY` ticks per meter from InfluxDB
(the counters' names from the `energy_delta` field keys, their values from `energy`) before
the writer consumes a reading.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache

from emm.messages import Reading

log = logging.getLogger(__name__)

HISTORY = 8  # ticks kept per meter: how late a reading may come and still get its delta
SIGNIFICANT_DIGITS = 13  # float64 keeps 15-16; the rest is noise from scaling and subtraction
GAP_TICKS_COUNTED = 10_000  # beyond this many missed ticks the rest is estimated from the period


def increment(previous: float, current: float) -> float:
    """What a counter counted from `previous` to `current`: the difference, or `current`
    when it went down (it restarted from zero), rounded to 13 significant digits."""
    if current < previous:
        return current
    diff = current - previous
    magnitude = max(abs(previous), abs(current))
    if diff == 0 or magnitude == 0:
        return 0.0
    digits = SIGNIFICANT_DIGITS - 1 - math.floor(math.log10(magnitude))
    return round(diff, digits) + 0.0  # + 0.0: never -0.0


@dataclass(frozen=True, slots=True)
class Delta:
    """The counters' increments of one meter at one tick, and how many ticks before it were
    missed (their increments are included)."""

    tick_ms: int
    values: dict[str, float]
    gap_ticks: int = 0


@dataclass(frozen=True, slots=True)
class Seen:
    """What one reading told: counters that went down, and the delta points to write."""

    resets: list[str] = field(default_factory=list)
    deltas: list[Delta] = field(default_factory=list)


@dataclass(slots=True)
class _History:
    """The last ticks of one meter (ascending) and their counter values."""

    ticks: list[int] = field(default_factory=list)
    values: dict[int, dict[str, float]] = field(default_factory=dict)

    def before(self, tick_ms: int, name: str) -> float | None:
        """The counter's latest value before `tick_ms`."""
        found = self.tick_before(tick_ms, name)
        return None if found is None else found[1]

    def tick_before(self, tick_ms: int, name: str) -> tuple[int, float] | None:
        """The counter's latest tick and value before `tick_ms`."""
        for i in range(bisect.bisect_left(self.ticks, tick_ms) - 1, -1, -1):
            value = self.values[self.ticks[i]].get(name)
            if value is not None:
                return self.ticks[i], value
        return None


TickCounter = Callable[[int, int], int]


def tick_counter(next_after: Callable[[int], int]) -> TickCounter:
    """A function counting the schedule's ticks strictly between two ticks.

    `next_after` (e.g. `CronSchedule.next_after`) is cached: every meter shares the ticks.
    """
    following = lru_cache(maxsize=4096)(next_after)

    def between(start_ms: int, end_ms: int) -> int:
        n, t = 0, following(start_ms)
        while t < end_ms and n < GAP_TICKS_COUNTED:
            n, t = n + 1, following(t)
        if t < end_ms:  # a very long gap: the rest at the period found there
            n += (end_ms - t) // max(1, following(t) - t)
        return n

    return between


class CounterWatch:
    """Remembers the last counter values per meter: reports the counters that went down and
    the increments since the previous reading."""

    def __init__(self, ticks_between: TickCounter | None = None) -> None:
        self._meters: dict[int, _History] = {}
        self._ticks_between = ticks_between

    def check(self, reading: Reading) -> list[str]:
        """Names of the reading's counters lower than in the meter's previous tick.

        A reading older than one already seen (delivered late) is not compared.
        """
        return self.observe(reading).resets

    def observe(self, reading: Reading) -> Seen:
        """Take a reading: its counters that went down and the delta points it gives."""
        current = {n: reading.fields[n] for n in reading.counters if n in reading.fields}
        if not current:
            return Seen()
        meter_id, tick = reading.meter.id, reading.tick_ms
        history = self._meters.setdefault(meter_id, _History())
        known = history.values.get(tick)
        newest = history.ticks[-1] if history.ticks else None
        resets: list[str] = []
        if newest is not None and tick > newest:
            last = history.values[newest]
            for name, value in current.items():
                previous = last.get(name)
                if previous is None:
                    previous = history.before(tick, name)
                if previous is not None and value < previous:
                    resets.append(name)
            resets.sort()
        if known is None and len(history.ticks) >= HISTORY and tick < history.ticks[0]:
            log.warning(
                "meter %d: reading of tick %d is older than the %d ticks kept; no delta for it",
                meter_id,
                tick,
                HISTORY,
            )
            return Seen(resets)
        self._remember(history, tick, current)
        deltas = [d for d in (self._delta(history, tick),) if d is not None]
        later = bisect.bisect_right(history.ticks, tick)
        if known != current and later < len(history.ticks):
            # the next tick's increment was taken from before this one: it changes
            following = self._delta(history, history.ticks[later])
            if following is not None:
                deltas.append(following)
        if resets:
            log.warning(
                "meter %d: counter(s) %s went down at tick %d (meter restarted counting?); "
                "stored as reported and flagged in meter_status",
                meter_id,
                ", ".join(resets),
                tick,
            )
        return Seen(resets, deltas)

    def previous(self, meter_id: int, tick_ms: int, name: str) -> tuple[int, float] | None:
        """The tick and value of a meter's counter in its latest reading kept before
        `tick_ms` (None: none is kept)."""
        history = self._meters.get(meter_id)
        return None if history is None else history.tick_before(tick_ms, name)

    def ticks_between(self, start_ms: int, end_ms: int) -> int:
        """The schedule's ticks strictly between two ticks (0 without a schedule)."""
        return 0 if self._ticks_between is None else self._ticks_between(start_ms, end_ms)

    def _remember(self, history: _History, tick: int, values: dict[str, float]) -> None:
        if tick not in history.values:
            bisect.insort(history.ticks, tick)
        history.values[tick] = values
        while len(history.ticks) > HISTORY:
            del history.values[history.ticks.pop(0)]

    def _delta(self, history: _History, tick: int) -> Delta | None:
        """The delta point of a remembered tick, None when no earlier value is known."""
        index = bisect.bisect_left(history.ticks, tick)
        last = history.values[history.ticks[index - 1]] if index else {}
        values = {}
        for name, value in history.values[tick].items():
            previous = last.get(name)
            if previous is None:  # not read at the previous tick: the one before that
                previous = history.before(tick, name)
            if previous is not None:
                values[name] = increment(previous, value)
        if not values:
            return None
        gap = 0
        if index > 0 and self._ticks_between is not None:
            gap = self._ticks_between(history.ticks[index - 1], tick)
        return Delta(tick, values, gap)

    def restore(self, rows: Iterable[tuple[int, int, dict[str, float]]]) -> int:
        """Seed the history with stored readings `(meter_id, tick_ms, counters)`; returns how
        many meters it now knows. Give a meter's last `HISTORY` ticks, or all it has."""
        for meter_id, tick, values in rows:
            history = self._meters.setdefault(meter_id, _History())
            if tick not in history.values:
                self._remember(history, tick, values)
        return len(self._meters)
