"""The scheduler's clock: it ticks on the union of `EMM_READ_CRON` and the meters' own crons
(`energy_meters.read_cron`), and at each tick hands out jobs for the meters whose cron fires.

Poll classes are decided here too, from the tick's time alone: class N by the tick's index in
the meter's schedule, class 0 (once, then daily) on the first tick this scheduler reads the
meter and then on the tick after the meter's daily moment. The once-and-daily registers are
the scheduler's call rather than the worker's because the scheduler sees every tick of every
meter, so each job's plan is one of a few fixed ones per type, cacheable by id on both sides;
a worker deciding what it has read would need the slow registers in every job and its own
memory of each device, which also moves when a gateway changes hands.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from emm.config import LoadedConfig, MeterConfig
from emm.messages import Job
from emm.planner import daily_due, tick_index
from emm.schedule import CronSchedule
from scheduler.jobs import MeterTick, PlanBook, build_jobs


@dataclass(frozen=True, slots=True)
class TickJobs:
    """The jobs of one tick and when to stop publishing them: half the shortest period among
    them after the tick, when a worker would drop them as late anyway."""

    jobs: list[Job]
    give_up_ms: int


@dataclass(frozen=True, slots=True)
class _Firing:
    """A schedule firing at a tick: the next tick, the tick's index, the tick before."""

    next_ms: int
    index: int
    previous_ms: int


class Ticks:
    """When to tick and what to publish at each tick, for the configuration last seen."""

    def __init__(self, default: CronSchedule) -> None:
        self.default = default
        self._schedules: dict[str, CronSchedule] = {default.expression: default}
        # (meter id, type) of the meters read since start: their class 0 waits for its moment
        self._read: set[tuple[int, str]] = set()
        self._plans = PlanBook()

    def next_after(self, ts_ms: int) -> int:
        """The first tick of any schedule strictly after `ts_ms`."""
        return min(schedule.next_after(ts_ms) for schedule in self._schedules.values())

    def update(self, config: LoadedConfig) -> None:
        """Tick on the crons of `config`'s meters (and `EMM_READ_CRON`) from now on."""
        schedules = {self.default.expression: self.default}
        for mc in config.meters:
            if mc.read_cron is not None:
                schedules.setdefault(mc.read_cron.expression, mc.read_cron)
        self._schedules = schedules

    def jobs(self, config: LoadedConfig, tick_ms: int) -> TickJobs:
        """The jobs of the tick at `tick_ms`: one per meter whose cron fires then and that has
        a register due, valid until that meter's next tick."""
        self.update(config)
        due = self.due(config.meters, tick_ms)
        jobs = build_jobs(config.meters, due, tick_ms, self._plans)
        shortest_ms = min((mt.deadline_ms - tick_ms for mt in due), default=0)
        return TickJobs(jobs, tick_ms + shortest_ms // 2)

    def due(self, meters: Sequence[MeterConfig], tick_ms: int) -> list[MeterTick]:
        """The meters whose schedule fires at `tick_ms`, in their order, each with its
        deadline, its tick index and whether its daily (class 0) registers are due."""
        firings: dict[str, _Firing | None] = {}
        due: list[MeterTick] = []
        read: set[tuple[int, str]] = set()
        for mc in meters:
            key = (mc.meter.id, mc.meter.type)
            schedule = mc.read_cron or self.default
            if schedule.expression not in firings:
                firings[schedule.expression] = _firing(schedule, tick_ms)
            firing = firings[schedule.expression]
            if firing is None:
                if key in self._read:
                    read.add(key)
                continue
            daily = key not in self._read or daily_due(mc.meter.id, firing.previous_ms, tick_ms)
            due.append(MeterTick(mc, firing.next_ms, firing.index, daily))
            read.add(key)
        self._read = read
        return due


def _firing(schedule: CronSchedule, tick_ms: int) -> _Firing | None:
    """How `schedule` fires at `tick_ms`; None when it does not."""
    if not schedule.fires_at(tick_ms):
        return None
    next_ms = schedule.next_after(tick_ms)
    return _Firing(
        next_ms, tick_index(tick_ms, next_ms - tick_ms), schedule.previous_before(tick_ms)
    )
