"""The worker's loop: many jobs in flight on one event loop, each acked after its reading.

Delivery guarantees (see the README's "Guarantees"):
- A job is acked only once RabbitMQ confirmed its reading. A reading that cannot be published
  (broker down) waits in the outbox and is published when the broker is back.
- A job delivered again (its ack was lost with the connection) is answered from the recent
  readings instead of reading the device a second time.
- A job that reaches a worker more than half a tick after its tick is not read: the value would
  not belong to the tick's timestamp.
- While RabbitMQ is unreachable no jobs arrive, so the worker keeps reading, on the same ticks,
  the meters of the last tick it was given; those readings wait in the outbox too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

from broker import JOBS, READINGS, Broker, Delivery
from emm import retry
from emm.errors import MessageError
from emm.messages import Job, Reading, Status
from emm.settings import WorkerSettings
from worker.health import DeviceHealth
from worker.modbus import DevicePool
from worker.reader import HoleMemory, read_job

log = logging.getLogger(__name__)


def _iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).isoformat(timespec="seconds")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _not_confirmed(reading_id: str, exc: BaseException, _wait_s: float) -> None:
    log.debug("reading %s not confirmed yet: %s", reading_id, exc)


def report(job: Job, reading: Reading, known: set[str] | frozenset[str] = frozenset()) -> None:
    """Log one line per meter per tick when anything went wrong, naming meter and registers.

    Registers in `known` (refused addresses already reported) do not make a line by themselves.
    """
    m = job.meter
    where = (
        f"meter {m.id} ({m.type} at {m.host}:{m.port} unit {m.unit_id}) tick {_iso(job.tick_ms)}"
    )
    if set(reading.errors) - known:
        names = ", ".join(sorted(reading.errors))
        log.warning("%s: %s; registers not read: %s", where, reading.status.error, names)
    if reading.missing:
        log.info("%s: not available (sentinel/NaN): %s", where, ", ".join(reading.missing))


@dataclass
class Outgoing:
    """A reading on its way to `emm.readings`; `confirmed` is set once RabbitMQ has it."""

    reading: Reading
    keep_until_ms: int  # a job delivered again after this is not read anyway (too late)
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)


class Worker:
    """Consumes `emm.jobs`; `concurrency` jobs (the prefetch) are handled at once."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.broker = Broker(settings.amqp_url, prefetch=settings.concurrency, name="emm-worker")
        self.pool = DevicePool(
            timeout_s=settings.read_timeout_s,
            connect_timeout_s=settings.connect_timeout_s,
            idle_close_s=settings.idle_close_s,
        )
        self.holes = HoleMemory()
        self.health = DeviceHealth(settings.offline_after_ticks, settings.offline_backoff_max_s)
        self.handled = 0  # jobs read and acked by this process
        self.redelivered = 0  # jobs RabbitMQ delivered again
        self.replayed = 0  # readings taken on the worker's own while RabbitMQ was away
        self.late = 0  # jobs acked unread because they came more than half a tick late
        self._late: dict[int, int] = {}  # tick -> late jobs since the last report
        self._tasks: set[asyncio.Task[object]] = set()
        # job id -> its reading, for jobs delivered again; kept for a few ticks
        self._recent: OrderedDict[str, Outgoing] = OrderedDict()
        self._outbox: asyncio.Queue[Outgoing] = asyncio.Queue()
        self._pending = 0  # readings in the outbox, not yet confirmed
        # the jobs of the newest tick this worker was given, by meter id
        self._latest_tick_ms = 0
        self._latest_jobs: dict[int, Job] = {}
        self._previous_jobs: dict[int, Job] = {}  # of the tick before, one period earlier

    # ------------------------------------------------------------------ jobs

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a background read failed", exc_info=task.exception())

    async def on_delivery(self, delivery: Delivery) -> None:
        # Return at once so the consumer keeps receiving; the job runs as its own task.
        self._spawn(self._handle_safely(delivery))

    async def _handle_safely(self, delivery: Delivery) -> None:
        """`handle`, with a fault of our own settled like any other error (dead-lettered, see
        `emm.fate`) instead of leaving the job unacked (stuck in the prefetch)."""
        try:
            await self.handle(delivery)
        except Exception as exc:
            await self._settle(delivery, exc)

    async def handle(self, delivery: Delivery) -> None:
        """Decode, read, publish the reading, then ack the job (or dead-letter a bad one)."""
        try:
            job = Job.decode(delivery.body)
        except MessageError as exc:
            await self._settle(delivery, exc)
            return
        if delivery.redelivered:
            self.redelivered += 1
            log.info("job %s delivered again", job.job_id)
        self._remember(job)
        out = self._recent.get(job.job_id)
        if out is None:
            late_ms = _now_ms() - job.tick_ms
            period_ms = job.deadline_ms - job.tick_ms
            if late_ms > period_ms / 2:
                self._note_late(job, late_ms)
                await self._settle(delivery, None)
                return
            out = await self._read(job)
        # Ack only once the reading is confirmed (immediately, or when the broker is back).
        await out.confirmed.wait()
        await self._settle(delivery, None)
        self.handled += 1

    def _note_late(self, job: Job, late_ms: int) -> None:
        """Log the first job of a tick that came too late; the rest are counted and summed up
        by `_report_late` (an overloaded worker would otherwise log thousands of lines)."""
        if job.tick_ms not in self._late:
            log.warning(
                "job %s reached this worker %.1f s after its tick; not read (the value would not "
                "belong to the tick)",
                job.job_id,
                late_ms / 1000,
            )
            self._late[job.tick_ms] = 0
        self._late[job.tick_ms] += 1
        self.late += 1

    def _report_late(self) -> None:
        for tick_ms, count in sorted(self._late.items()):
            if count > 1:
                log.warning(
                    "tick %s: %d jobs reached this worker more than half a tick after the tick; "
                    "not read (more workers or a longer period would read them)",
                    _iso(tick_ms),
                    count,
                )
        self._late.clear()

    async def _read(self, job: Job) -> Outgoing:
        """Read the meter of `job` (or note that it is offline) and queue the reading."""
        period_ms = job.deadline_ms - job.tick_ms
        reason = self.health.skip_reason(job.meter, job.tick_ms)
        if reason is not None:
            reading = Reading(job.meter, job.tick_ms, {}, Status(False, "offline", reason))
        else:
            known = self.holes.unreadable(job.meter)
            was_offline = self.health.is_offline(job.meter)
            reading = await read_job(
                job, self.pool, attempts=self.settings.read_attempts, holes=self.holes
            )
            self.health.record(
                job.meter, job.tick_ms, period_ms, reading.status.up, reading.status.error_code
            )
            if not was_offline and not self.health.is_offline(job.meter):
                report(job, reading, known)
        out = Outgoing(reading, keep_until_ms=job.deadline_ms + period_ms)
        self._recent[job.job_id] = out
        self._recent.move_to_end(job.job_id)
        self._pending += 1
        self._outbox.put_nowait(out)
        return out

    def _remember(self, job: Job) -> None:
        """Keep the newest tick's jobs: they are what the worker reads if RabbitMQ goes away."""
        if job.tick_ms > self._latest_tick_ms:
            period_ms = job.deadline_ms - job.tick_ms
            follows = job.tick_ms - self._latest_tick_ms == period_ms
            self._previous_jobs = self._latest_jobs if follows else {}
            self._latest_tick_ms = job.tick_ms
            self._latest_jobs = {}
        if job.tick_ms == self._latest_tick_ms:
            self._latest_jobs[job.meter.id] = job

    async def _settle(self, delivery: Delivery, error: BaseException | None) -> None:
        await self.broker.settle(JOBS, delivery, error)

    # ------------------------------------------------------------------ outbox

    async def _publisher(self) -> None:
        """Publish queued readings with confirms, waiting out broker outages."""
        while True:
            out = await self._outbox.get()
            reading_id = out.reading.reading_id
            await retry.OUTBOX_PUBLISH.call(
                partial(self.broker.publish, READINGS, out.reading.encode(), message_id=reading_id),
                on_retry=partial(_not_confirmed, reading_id),
            )
            out.confirmed.set()
            self._pending -= 1

    def _prune(self) -> None:
        """Forget confirmed readings whose jobs, if delivered again, would be too late to read:
        such a job is acked without a read either way, so the reading is no longer needed."""
        now = _now_ms()
        while self._recent:
            out = next(iter(self._recent.values()))
            if out.keep_until_ms >= now or not out.confirmed.is_set():
                break
            self._recent.popitem(last=False)

    # ------------------------------------------------------------------ replay

    def _replay_set(self) -> dict[int, Job]:
        """The meters this worker reads while RabbitMQ is away.

        Those of the last tick it was given; and when that tick brought fewer jobs than the one
        before (the connection went while its jobs were being delivered), also the meters of
        the tick before that did not come again: their jobs are stuck in the broker.
        """
        jobs = dict(self._latest_jobs)
        if len(self._latest_jobs) < len(self._previous_jobs):
            for meter_id, job in self._previous_jobs.items():
                jobs.setdefault(meter_id, job)
        return jobs

    async def _replayer(self, stop: asyncio.Event) -> None:
        """While RabbitMQ is unreachable, read the last tick's meters on the following ticks."""
        replayed_tick = 0
        while not stop.is_set():
            await asyncio.sleep(0.1)
            if self.broker.connected or not self._latest_jobs:
                replayed_tick = 0
                continue
            sample = next(iter(self._latest_jobs.values()))
            period_ms = sample.deadline_ms - sample.tick_ms
            if period_ms <= 0:
                continue
            now = _now_ms()
            tick_ms = self._latest_tick_ms + (now - self._latest_tick_ms) // period_ms * period_ms
            if tick_ms <= replayed_tick:
                continue
            if tick_ms == self._latest_tick_ms and now - tick_ms > period_ms // 2:
                continue  # too late for the stuck jobs of the last tick; wait for the next
            if self._pending >= self.settings.outbox_max:
                log.error(
                    "outbox full (%d readings waiting for RabbitMQ); tick %s not read",
                    self._pending,
                    _iso(tick_ms),
                )
                replayed_tick = tick_ms
                continue
            replayed_tick = tick_ms
            jobs = [
                replace(job, tick_ms=tick_ms, deadline_ms=tick_ms + period_ms)
                for job in self._replay_set().values()
            ]
            jobs = [job for job in jobs if job.job_id not in self._recent]
            if not jobs:
                continue
            log.warning(
                "RabbitMQ unreachable at tick %s: reading %d meter(s) given to this worker "
                "lately on its own; readings wait until it is back",
                _iso(tick_ms),
                len(jobs),
            )
            for job in jobs:
                self.replayed += 1
                self._spawn(self._read(job))

    # ------------------------------------------------------------------ main

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        await self.broker.connect()
        await self.broker.consume(JOBS, self.on_delivery)
        log.info(
            "worker started: %d jobs in flight at most, read timeout %.2f s, %d attempts",
            self.settings.concurrency,
            self.settings.read_timeout_s,
            self.settings.read_attempts,
        )
        # One publisher per job in flight: each waits for its confirm, which RabbitMQ gives only
        # once a persistent message is on disk (often 100-200 ms under load), so fewer would
        # make readings queue for the confirms of others while their jobs hold the prefetch.
        publishers = [
            asyncio.create_task(self._publisher()) for _ in range(self.settings.concurrency)
        ]
        replayer = asyncio.create_task(self._replayer(stop))
        try:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), timeout=5.0)
                except TimeoutError:
                    self.pool.close_idle()
                    self._prune()
                    self._report_late()
        finally:
            self._report_late()
            replayer.cancel()
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=10)
            # Give readings still in the outbox a moment to reach RabbitMQ; what does not make
            # it is read again from the redelivered jobs.
            deadline = time.monotonic() + 5
            while self._pending and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            for publisher in publishers:
                publisher.cancel()
            await self.broker.close()
            self.pool.close()


async def run(settings: WorkerSettings, stop: asyncio.Event | None = None) -> None:
    await Worker(settings).run(stop)
