"""The scheduler's loop: wait for the tick, load the configuration, publish one job per meter.

Each job goes to the shard queue of its gateway (`broker.shard_of`), so one worker at a time
reads a gateway; each shard also gets a `TickMarker` just before the tick's jobs, which tells
the worker that owns it so (see `worker.shards`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from broker import JOBS, SHARDS, Broker, job_queue, shard_of
from emm import retry
from emm.config import LoadedConfig
from emm.errors import BrokerError
from emm.log import Summary, amqp_where, postgres_where
from emm.messages import MARKER_VERSION, Job, TickMarker
from emm.schedule import CronSchedule
from emm.settings import SchedulerSettings
from scheduler import metrics
from scheduler.repo import ConfigRepo
from scheduler.ticks import Ticks

log = logging.getLogger(__name__)

PUBLISH_IN_FLIGHT = 2048  # unconfirmed publishes at once; confirms arrive in batches


def _iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


async def publish_jobs(
    broker: Broker, jobs: list[Job], give_up_ms: int, clock: Callable[[], float] = time.time
) -> int:
    """Publish every job with confirms, retrying broker failures until `give_up_ms`.

    Each job's TTL is the time left until its deadline (the next tick), so jobs no worker can
    start in time expire instead of piling up. Publishing stops earlier, half a tick after the
    tick, because a worker would not read a job that late: while RabbitMQ is away the workers
    read the meters they hold on their own. Returns how many were confirmed.
    """
    gate = asyncio.Semaphore(PUBLISH_IN_FLIGHT)
    give_up_s = give_up_ms / 1000

    async def one(job: Job) -> bool:
        routing_key = job_queue(shard_of(job.meter.host, job.meter.port))

        async def attempt() -> bool:
            now_ms = clock() * 1000
            if now_ms >= give_up_ms:
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
    broker: Broker, ticks: Ticks, config: LoadedConfig, tick_ms: int, tally: _Tally
) -> None:
    """Publish the markers and jobs of `tick_ms` for `config`, and say how it went."""
    started = time.monotonic()
    tick = ticks.jobs(config, tick_ms)
    jobs = tick.jobs
    period_ms = ticks.next_after(tick_ms) - tick_ms
    await publish_markers(broker, tick_ms, period_ms, jobs)
    published = await publish_jobs(broker, jobs, tick.give_up_ms)
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
    else:
        log.error(
            "tick %s: only %d of %d jobs published within half a tick (RabbitMQ "
            "unreachable); workers read the meters they were given last on their own",
            _iso(tick_ms),
            published,
            len(jobs),
        )


async def run(settings: SchedulerSettings, stop: asyncio.Event | None = None) -> None:
    """Tick until `stop` is set (or forever)."""
    stop = stop or asyncio.Event()
    ticks = Ticks(CronSchedule(settings.read_cron, setting="EMM_READ_CRON"))
    repo = ConfigRepo(settings.postgres_dsn)
    broker = Broker(settings.amqp_url, name="emm-scheduler")
    metrics.watch(connected=lambda: broker.connected)
    await broker.connect()
    log.info(
        "scheduler started: EMM_READ_CRON=%r; %s; %s",
        ticks.default.expression,
        postgres_where(settings.postgres_dsn),
        amqp_where(settings.amqp_url),
    )
    tally = _Tally()
    summary = Summary(log, tally.counts, settings.log_summary_s)
    summaries = asyncio.create_task(summary.run(stop))
    try:
        await _tick_until(stop, ticks, repo, broker, tally)
    finally:
        summaries.cancel()
        log.info("scheduler stopped %s", summary.final())
        repo.close()
        await broker.close()


async def _tick_until(
    stop: asyncio.Event, ticks: Ticks, repo: ConfigRepo, broker: Broker, tally: _Tally
) -> None:
    """Wait for each tick, load the configuration and publish the tick's jobs."""
    # the meters' own crons are known once the configuration is: the first tick may be theirs
    config = await asyncio.to_thread(repo.load)
    if config is not None:
        ticks.update(config)
    tick_ms = ticks.next_after(int(time.time() * 1000))
    while not stop.is_set():
        wait_s = tick_ms / 1000 - time.time()
        if wait_s > 0:
            try:
                await asyncio.wait_for(stop.wait(), timeout=wait_s)
                break
            except TimeoutError:
                pass
        config = await asyncio.to_thread(repo.load)
        if config is not None:
            await publish_tick(broker, ticks, config, tick_ms, tally)
        now_ms = int(time.time() * 1000)
        next_ms = ticks.next_after(tick_ms)
        if next_ms <= now_ms:
            skipped_to = ticks.next_after(now_ms)
            log.warning("tick %s overran; skipping to %s", _iso(tick_ms), _iso(skipped_to))
            next_ms = skipped_to
        tick_ms = next_ms
