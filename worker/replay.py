"""The replay: while RabbitMQ is unreachable no jobs arrive, so the worker keeps reading, on the
same ticks, the meters of the last tick it was given; those readings wait in the outbox until
RabbitMQ is back. It was given them because it owns their gateways' shards (`worker.shards`),
and it forgets a gateway's meters when it hands its shard over, so it never reads a gateway
another worker owns; it stops starting reads as soon as RabbitMQ is back.

It remembers the jobs of the newest tick (and of the tick before, whose jobs may be stuck in the
broker when the connection went while they were being delivered), and on each tick RabbitMQ is
away makes that tick's jobs from them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from msgspec.structs import replace

from broker import Broker
from emm.messages import Job
from worker.outbox import Outbox
from worker.ticks import iso, now_ms

log = logging.getLogger(__name__)


class Replay:
    """The newest ticks' jobs of one worker process, read on its own while RabbitMQ is away."""

    def __init__(
        self, broker: Broker, outbox: Outbox, *, outbox_max: int, clock: Callable[[], int] = now_ms
    ) -> None:
        self.broker = broker
        self.outbox = outbox
        self.outbox_max = outbox_max
        self.clock = clock
        self.replayed = 0  # readings taken on the worker's own while RabbitMQ was away
        # the jobs of the newest tick this worker was given, by meter id
        self._latest_tick_ms = 0
        self._latest_jobs: dict[int, Job] = {}
        self._previous_jobs: dict[int, Job] = {}  # of the tick before, one period earlier

    def remember(self, job: Job) -> None:
        """Keep the newest tick's jobs: they are what the worker reads if RabbitMQ goes away."""
        if job.tick_ms > self._latest_tick_ms:
            period_ms = job.deadline_ms - job.tick_ms
            follows = job.tick_ms - self._latest_tick_ms == period_ms
            self._previous_jobs = self._latest_jobs if follows else {}
            self._latest_tick_ms = job.tick_ms
            self._latest_jobs = {}
        if job.tick_ms == self._latest_tick_ms:
            self._latest_jobs[job.meter.id] = job

    def forget(self, gateways: Callable[[tuple[str, int]], bool]) -> None:
        """Read the meters behind the gateways `gateways` picks no more (another worker owns
        them now)."""
        for jobs in (self._latest_jobs, self._previous_jobs):
            gone = [i for i, job in jobs.items() if gateways((job.meter.host, job.meter.port))]
            for meter_id in gone:
                del jobs[meter_id]

    def jobs(self) -> dict[int, Job]:
        """The meters this worker reads while RabbitMQ is away, by meter id.

        Those of the last tick it was given; and when that tick brought fewer jobs than the one
        before (the connection went while its jobs were being delivered), also the meters of
        the tick before that did not come again: their jobs are stuck in the broker.
        """
        jobs = dict(self._latest_jobs)
        if len(self._latest_jobs) < len(self._previous_jobs):
            for meter_id, job in self._previous_jobs.items():
                jobs.setdefault(meter_id, job)
        return jobs

    async def run(self, stop: asyncio.Event, read: Callable[[Job], None]) -> None:
        """While RabbitMQ is unreachable, `read` the last tick's meters on the following ticks."""
        replayed_tick = 0
        while not stop.is_set():
            await asyncio.sleep(0.1)
            if self.broker.connected or not self._latest_jobs:
                replayed_tick = 0
                continue
            tick_ms = self._due_tick(replayed_tick)
            if tick_ms is None:
                continue
            replayed_tick = tick_ms
            if self.outbox.pending >= self.outbox_max:
                log.error(
                    "outbox full (%d readings waiting for RabbitMQ); tick %s not read",
                    self.outbox.pending,
                    iso(tick_ms),
                )
                continue
            jobs = self._jobs_at(tick_ms)
            if not jobs:
                continue
            log.warning(
                "RabbitMQ unreachable at tick %s: reading %d meter(s) given to this worker "
                "lately on its own; readings wait until it is back",
                iso(tick_ms),
                len(jobs),
            )
            for job in jobs:
                self.replayed += 1
                read(job)

    def _period_ms(self) -> int:
        sample = next(iter(self._latest_jobs.values()))
        return sample.deadline_ms - sample.tick_ms

    def _due_tick(self, replayed_tick: int) -> int | None:
        """The tick to read now, if one is due after `replayed_tick` and not too late to read."""
        period_ms = self._period_ms()
        if period_ms <= 0:
            return None
        now = self.clock()
        tick_ms = self._latest_tick_ms + (now - self._latest_tick_ms) // period_ms * period_ms
        if tick_ms <= replayed_tick:
            return None
        if tick_ms == self._latest_tick_ms and now - tick_ms > period_ms // 2:
            return None  # too late for the stuck jobs of the last tick; wait for the next
        return tick_ms

    def _jobs_at(self, tick_ms: int) -> list[Job]:
        """The jobs to read at `tick_ms`: the remembered ones moved to that tick, less those
        whose reading the outbox already holds."""
        period_ms = self._period_ms()
        jobs = [
            replace(job, tick_ms=tick_ms, deadline_ms=tick_ms + period_ms)
            for job in self.jobs().values()
        ]
        return [job for job in jobs if self.outbox.recent(job.job_id) is None]
