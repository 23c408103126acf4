"""The scheduler's loop: wait for the tick, load the configuration, publish one job per meter.

Each job goes to the shard queue of its gateway (`broker.shard_of`), so one worker at a time
reads a gateway; each shard also gets a `TickMarker` just before the tick's jobs, which tells
the worker that owns it so (see `worker.shards`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from broker import JOBS, SHARDS, Broker, job_queue, shard_of
from broker.lease import Lease
from emm import retry
from emm.config import LoadedConfig
from emm.errors import BrokerError
from emm.health import Progress, Sample, default_path
from emm.log import Summary, amqp_where, postgres_where
from emm.messages import MARKER_VERSION, Job, TickMarker
from emm.schedule import CronSchedule
from emm.service import unless_stopped
from emm.settings import SchedulerSettings
from scheduler import metrics
from scheduler.repo import ConfigRepo
from scheduler.ticks import Ticks

log = logging.getLogger(__name__)

PUBLISH_IN_FLIGHT = 2048  # unconfirmed publishes at once; confirms arrive in batches
LEASE_RETRY_S = 1.0  # how often a standby scheduler asks for the lease


def _iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


async def publish_jobs(
    broker: Broker,
    jobs: list[Job],
    give_up_ms: int,
    clock: Callable[[], float] = time.time,
    may_publish: Callable[[], bool] = lambda: True,
) -> int:
    """Publish every job with confirms, retrying broker failures until `give_up_ms`.

    Each job's TTL is the time left until its deadline (the next tick), so jobs no worker can
    start in time expire instead of piling up. Publishing stops earlier, half a tick after the
    tick, because a worker would not read a job that late: while RabbitMQ is away the workers
    read the meters they hold on their own; and at once when `may_publish` says no (another
    scheduler took over while this one was away from RabbitMQ). Returns how many were
    confirmed.
    """
    gate = asyncio.Semaphore(PUBLISH_IN_FLIGHT)
    give_up_s = give_up_ms / 1000

    async def one(job: Job) -> bool:
        routing_key = job_queue(shard_of(job.meter.host, job.meter.port))

        async def attempt() -> bool:
            now_ms = clock() * 1000
            if now_ms >= give_up_ms or not may_publish():
                return False
            await broker.publish(
                routing_key,
                job.encode(),
                exchange=JOBS,
                expiration_s=(job.deadline_ms - now_ms) / 1000,
                message_id=job.job_id,
            )
            return True

        async with gate:
            try:
                return await retry.JOB_PUBLISH.call(
                    attempt,
                    until=give_up_s,
                    clock=clock,
                    on_retry=lambda exc, _wait_s: log.debug(
                        "job %s not published yet: %s", job.job_id, exc
                    ),
                )
            except BrokerError:
                return False

    results = await asyncio.gather(*(one(job) for job in jobs))
    return sum(results)


def shard_jobs(jobs: list[Job]) -> list[int]:
    """How many of `jobs` each shard gets, by shard."""
    counts = [0] * SHARDS
    for job in jobs:
        counts[shard_of(job.meter.host, job.meter.port)] += 1
    return counts


async def publish_markers(
    broker: Broker,
    tick_ms: int,
    period_ms: int,
    jobs: list[Job],
    clock: Callable[[], float] = time.time,
) -> int:
    """Publish the tick's marker to every shard (once: a marker lost to an outage only delays
    rebalancing by a tick); returns how many were confirmed. Each lives until the next tick."""
    counts = shard_jobs(jobs)
    busy = sum(1 for n in counts if n)
    expiration_s = max(0.001, (tick_ms + period_ms) / 1000 - clock())

    async def one(shard: int) -> bool:
        marker = TickMarker(MARKER_VERSION, tick_ms, counts[shard], busy)
        try:
            await broker.publish(
                job_queue(shard), marker.encode(), exchange=JOBS, expiration_s=expiration_s
            )
        except BrokerError:
            return False
        return True

    return sum(await asyncio.gather(*(one(k) for k in range(SHARDS))))


class _Tally:
    """What the scheduler did, for its summary lines."""

    def __init__(self) -> None:
        self.ticks = 0
        self.jobs = 0
        self.unpublished = 0

    def counts(self) -> dict[str, float]:
        return {"ticks": self.ticks, "jobs published": self.jobs, "unpublished": self.unpublished}


async def publish_tick(
    broker: Broker,
    ticks: Ticks,
    config: LoadedConfig,
    tick_ms: int,
    tally: _Tally,
    may_publish: Callable[[], bool] = lambda: True,
) -> bool:
    """Publish the markers and jobs of `tick_ms` for `config`, and say how it went; whether
    every job was published."""
    started = time.monotonic()
    tick = ticks.jobs(config, tick_ms)
    jobs = tick.jobs
    period_ms = ticks.next_after(tick_ms) - tick_ms
    await publish_markers(broker, tick_ms, period_ms, jobs)
    published = await publish_jobs(broker, jobs, tick.give_up_ms, may_publish=may_publish)
    took_ms = (time.monotonic() - started) * 1000
    metrics.TICKS.inc()
    metrics.JOBS_PUBLISHED.inc(published)
    metrics.JOBS_UNPUBLISHED.inc(len(jobs) - published)
    metrics.METERS.set(len(jobs))
    metrics.LAST_TICK.set(tick_ms / 1000)
    first = tally.jobs == 0 and published > 0
    tally.ticks += 1
    tally.jobs += published
    tally.unpublished += len(jobs) - published
    if published == len(jobs):
        log.info(
            "tick %s: %d jobs published in %.0f ms%s",
            _iso(tick_ms),
            published,
            took_ms,
            " (the first)" if first else "",
        )
        return True
    else:
        log.error(
            "tick %s: only %d of %d jobs published within half a tick (RabbitMQ "
            "unreachable); workers read the meters they were given last on their own",
            _iso(tick_ms),
            published,
            len(jobs),
        )
    return False


class Scheduler:
    """The tick loop of one scheduler, which publishes only while it holds the vhost's lease
    (`broker.lease`): a second scheduler started by mistake stands by and takes over when the
    first one's connection is gone, from the first tick after that."""

    def __init__(self, settings: SchedulerSettings) -> None:
        self.ticks = Ticks(CronSchedule(settings.read_cron, setting="EMM_READ_CRON"))
        self.repo = ConfigRepo(settings.postgres_dsn)
        self.broker = Broker(settings.amqp_url, name="emm-scheduler")
        self.lease = Lease(self.broker)
        path = Path(settings.health_file or default_path("scheduler"))
        self.health = Progress("scheduler", path, settings.health_stall_s)
        self.published = 0  # ticks published whole
        self.due = False  # a tick is due and not yet published whole
        self.tally = _Tally()
        self.summary = Summary(log, self.tally.counts, settings.log_summary_s)
        self.settings = settings
        metrics.watch(connected=lambda: self.broker.connected)

    def progress(self) -> Sample:
        """The health sample: a tick due and not published is the work waiting."""
        return {"tick": (self.published, int(self.due))}

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until `stop` is set."""
        beat = asyncio.create_task(self.health.run(stop, self.progress))
        summaries = asyncio.create_task(self.summary.run(stop))
        started = False  # a scheduler refused at start says only why (one line)
        try:
            if not await unless_stopped(stop, self.broker.connect()):
                return
            started = True
            log.info(
                "scheduler started: EMM_READ_CRON=%r; %s; %s",
                self.ticks.default.expression,
                postgres_where(self.settings.postgres_dsn),
                amqp_where(self.settings.amqp_url),
            )
            # the meters' own crons are known once the configuration is: the first tick may
            # be theirs
            config = await asyncio.to_thread(self.repo.load)
            if config is not None:
                self.ticks.update(config)
            await self._loop(stop)
        finally:
            summaries.cancel()
            if started:
                log.info("scheduler stopped %s", self.summary.final())
            self.repo.close()
            await self.broker.close()
            stop.set()
            await beat

    async def _loop(self, stop: asyncio.Event) -> None:
        tick_ms = self.ticks.next_after(int(time.time() * 1000))
        while not stop.is_set():
            wait_s = tick_ms / 1000 - time.time()
            if wait_s > 0:
                try:
                    await asyncio.wait_for(stop.wait(), timeout=wait_s)
                    break
                except TimeoutError:
                    pass
            if not await self._holds_lease():
                if not await self._stand_by(stop):
                    break
                tick_ms = self.ticks.next_after(int(time.time() * 1000))
                continue
            await self._tick(tick_ms)
            now_ms = int(time.time() * 1000)
            next_ms = self.ticks.next_after(tick_ms)
            if next_ms <= now_ms:
                skipped_to = self.ticks.next_after(now_ms)
                log.warning("tick %s overran; skipping to %s", _iso(tick_ms), _iso(skipped_to))
                next_ms = skipped_to
            tick_ms = next_ms

    async def _holds_lease(self) -> bool:
        """Whether this scheduler may publish. With RabbitMQ away it cannot be asked: the tick
        goes ahead (its publishing waits for RabbitMQ), and the lease is asked for again on
        reconnecting, before any job goes out."""
        try:
            return await self.lease.take()
        except BrokerError as exc:
            log.debug("cannot ask RabbitMQ for the lease: %s", exc)
            return True

    async def _stand_by(self, stop: asyncio.Event) -> bool:
        """Wait until this scheduler holds the lease (True) or is stopped (False)."""
        self.due = False
        self.health.note = "standby: another scheduler publishes on this vhost"
        log.warning(
            "another scheduler is publishing on this vhost (it holds the queue %s); standing "
            "by to take over when it stops",
            self.lease.queue,
        )
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=LEASE_RETRY_S)
            if not stop.is_set() and await self._holds_lease():
                self.health.note = ""
                log.warning("the other scheduler is gone: publishing from the next tick on")
                return True
        return False

    async def _tick(self, tick_ms: int) -> None:
        """Load the configuration and publish the tick's jobs."""
        self.due = True
        config = await asyncio.to_thread(self.repo.load)
        if config is None:
            return
        published = await publish_tick(
            self.broker,
            self.ticks,
            config,
            tick_ms,
            self.tally,
            # while RabbitMQ is away publishing fails and is retried; once back, the lease
            # was asked for before the connection counted as up
            may_publish=lambda: self.lease.held or not self.broker.connected,
        )
        if published:
            self.due = False
            self.published += 1


async def run(settings: SchedulerSettings, stop: asyncio.Event | None = None) -> None:
    """Tick until `stop` is set (or forever)."""
    await Scheduler(settings).run(stop or asyncio.Event())
