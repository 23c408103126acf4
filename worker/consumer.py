"""The consumer of the jobs: decode, late?, already read?, read, wait for the confirm, settle.

Each delivery runs as its own task, so `concurrency` jobs (the prefetch) are read at once. A job
is acked only once RabbitMQ confirmed its reading (`worker.outbox`); a job that reaches the
worker, or gets a connection to its gateway, more than half a tick after its tick is acked
unread; a malformed one is dead-lettered. Which shard queues' jobs reach it is
`worker.shards`'s business.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

from broker import Broker, Delivery
from emm.errors import MessageError
from emm.fate import Outcome, decide
from emm.limits import MAX_JOB_BYTES, check_size
from emm.log import context
from emm.messages import Job, Reading, Status
from emm.text import quote
from worker import metrics
from worker.device import Device, Devices, GatewayAddress, Problem
from worker.outbox import Outbox, Outgoing
from worker.reader import read_job
from worker.replay import Replay
from worker.ticks import iso, now_ms

log = logging.getLogger(__name__)


def report(
    job: Job, reading: Reading, device: Device, known: set[str] | frozenset[str] = frozenset()
) -> None:
    """Log a device's read problem when it starts, when it changes (another error, other
    registers) and when it ends, not every tick; registers are named only when some but not
    all failed. Registers in `known` (refused addresses already reported) make no problem."""
    m = job.meter
    where = f"meter {m.id} ({quote(m.type)} at {quote(m.host)}:{m.port} unit {m.unit_id})"
    code = reading.status.error_code
    extra = context(
        meter_id=m.id, gateway=f"{m.host}:{m.port}", tick_ms=job.tick_ms, error_code=code
    )
    failed = frozenset(reading.errors) - known
    was = device.problem
    if not failed:
        if was is not None:
            device.problem = None
            log.info(
                "%s: read fully again at tick %s, after %d tick(s) with %s",
                where,
                iso(job.tick_ms),
                was.ticks,
                was.error_code,
                extra=extra,
            )
    elif was is not None and (was.error_code, was.failed) == (code, failed):
        was.ticks += 1
    else:
        device.problem = Problem(code, failed, job.tick_ms)
        total = sum(len(d.registers) for d in job.plan.decoders)
        if len(failed) < total:
            which = f"{len(failed)} of {total} registers not read: {', '.join(sorted(failed))}"
        else:
            which = f"none of its {total} registers read"
        log.warning(
            "%s tick %s: %s%s; %s",
            where,
            iso(job.tick_ms),
            "" if was is None else f"now (after {was.ticks} tick(s) of {was.error_code}) ",
            reading.status.error,
            which,
            extra=extra,
        )
    if reading.missing:
        missing = ", ".join(reading.missing)
        log.debug("%s: not available (sentinel/NaN): %s", where, missing, extra=extra)


class Consumer:
    """Handles the job deliveries of the shards it is given, and reads the jobs the replay
    gives it."""

    def __init__(
        self,
        broker: Broker,
        devices: Devices,
        outbox: Outbox,
        replay: Replay,
        *,
        read_attempts: int,
    ) -> None:
        self.broker = broker
        self.devices = devices
        self.outbox = outbox
        self.replay = replay
        self.read_attempts = read_attempts
        self.handled = 0  # jobs read and acked by this process
        self.redelivered = 0  # jobs RabbitMQ delivered again
        self.late = 0  # jobs acked unread because they came more than half a tick late
        self.settled = 0  # jobs settled: acked, requeued or dead-lettered (health's progress)
        self._late: dict[int, int] = {}  # tick -> late jobs since the last report
        self._tasks: set[asyncio.Task[object]] = set()
        self._reading: dict[asyncio.Task[Any], GatewayAddress] = {}  # tasks reading now, and where
        self._ticks: Counter[int] = Counter()  # ticks of the jobs being worked on

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> asyncio.Task[object]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a background read failed", exc_info=task.exception())

    async def wait(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for the jobs and reads in flight (at shutdown)."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout_s)

    def start(self, queue: str, delivery: Delivery) -> asyncio.Task[object]:
        """Handle `delivery` of `queue` in a task of its own, which ends once it is settled."""
        return self._spawn(self._handle_safely(queue, delivery))

    def read_later(self, job: Job) -> None:
        """Read `job` in a task of its own (a job the replay made, with no delivery to settle)."""
        self._spawn(self.read(job))

    def cancel_reads(self, gateways: Callable[[GatewayAddress], bool]) -> int:
        """Stop the reads in progress from the gateways `gateways` picks (another worker owns
        them now, and reads their jobs); returns how many were stopped."""
        stopped = [task for task, gateway in self._reading.items() if gateways(gateway)]
        for task in stopped:
            task.cancel()
        return len(stopped)

    async def _handle_safely(self, queue: str, delivery: Delivery) -> None:
        """`handle`, with a fault of our own settled like any other error (dead-lettered, see
        `emm.fate`) instead of leaving the job unacked (stuck in the prefetch)."""
        try:
            await self.handle(queue, delivery)
        except Exception as exc:
            await self._settle(queue, delivery, exc)
        except asyncio.CancelledError as exc:
            # stopped at shutdown or at a shard's hand-over: back to the queue, for the next
            # owner, now rather than when the connection closes
            if not delivery.processed:  # stopped while its ack was going out: done
                await self._settle(queue, delivery, exc)
            raise

    async def handle(self, queue: str, delivery: Delivery) -> None:
        """Decode, read, publish the reading, then ack the job (or dead-letter a bad one)."""
        try:
            check_size("job", delivery.body, MAX_JOB_BYTES)
            job = Job.decode(delivery.body)
        except MessageError as exc:
            await self._settle(queue, delivery, exc)
            return
        metrics.JOBS_CONSUMED.inc()
        self._ticks[job.tick_ms] += 1
        try:
            await self._handle(queue, delivery, job)
        finally:
            self._ticks[job.tick_ms] -= 1
            if not self._ticks[job.tick_ms]:
                del self._ticks[job.tick_ms]

    def oldest_tick_ms(self) -> int | None:
        """The tick of the oldest job being worked on (for `emm_worker_tick_lag_seconds`)."""
        return min(self._ticks, default=None)

    async def _handle(self, queue: str, delivery: Delivery, job: Job) -> None:
        if delivery.redelivered:
            self.redelivered += 1
            log.info("job %s delivered again", job.job_id)
        self.replay.remember(job)
        out = self.outbox.recent(job.job_id)
        if out is None:
            late_ms = now_ms() - job.tick_ms
            period_ms = job.deadline_ms - job.tick_ms
            if late_ms > period_ms / 2:
                self._note_late(job, late_ms)
                await self._settle(queue, delivery, None)
                return
            out = await self.read(job)
            if out is None:  # it waited for its gateway past half a tick
                self._note_late(job, now_ms() - job.tick_ms)
                await self._settle(queue, delivery, None)
                return
        # Ack only once the reading is confirmed (immediately, or when the broker is back).
        await out.confirmed.wait()
        await self._settle(queue, delivery, None)
        if not self.handled:
            m = job.meter
            log.info(
                "first job done: the reading of meter %d for tick %s confirmed by RabbitMQ",
                m.id,
                iso(job.tick_ms),
                extra=context(meter_id=m.id, gateway=f"{m.host}:{m.port}", tick_ms=job.tick_ms),
            )
        self.handled += 1

    def _note_late(self, job: Job, late_ms: int) -> None:
        """Log the first job of a tick that came too late; the rest are counted and summed up
        by `report_late` (an overloaded worker would otherwise log thousands of lines)."""
        if job.tick_ms not in self._late:
            log.warning(
                "job %s was %.1f s past its tick when it reached this worker or its gateway; "
                "not read (the value would not belong to the tick)",
                job.job_id,
                late_ms / 1000,
            )
            self._late[job.tick_ms] = 0
        self._late[job.tick_ms] += 1
        self.late += 1
        metrics.JOBS_LATE.inc()
        self.devices.note_late(job)

    def report_late(self) -> None:
        """Sum up, one line per tick, the jobs that came too late since the last call."""
        for tick_ms, count in sorted(self._late.items()):
            if count > 1:
                log.warning(
                    "tick %s: %d jobs reached this worker or their gateway more than half a "
                    "tick after the tick; not read (more workers, gateway connections or a "
                    "longer period would read them)",
                    iso(tick_ms),
                    count,
                )
        self._late.clear()

    async def read(self, job: Job) -> Outgoing | None:
        """Read the meter of `job` (or note that it is offline) and queue the reading; None
        when the job waited for its gateway past half a tick (not read)."""
        period_ms = job.deadline_ms - job.tick_ms
        device = self.devices.get(job.meter)
        health = device.health
        reason = health.skip_reason(job.tick_ms)
        if reason is not None:
            reading = Reading(job.meter, job.tick_ms, {}, Status(False, "offline", reason))
            metrics.READS.labels("skipped_offline", "offline").inc()
        else:
            known = device.holes.unreadable()
            was_offline = health.offline
            task = asyncio.current_task()
            assert task is not None
            self._reading[task] = (job.meter.host, job.meter.port)
            try:
                read = await read_job(job, device, attempts=self.read_attempts)
            finally:
                del self._reading[task]
            if read is None:
                return None
            reading = read
            health.record(
                job.meter, job.tick_ms, period_ms, reading.status.up, reading.status.error_code
            )
            _count(reading)
            if was_offline or health.offline:
                device.problem = None  # going offline and back are health's lines
            else:
                report(job, reading, device, known)
        return self.outbox.put(job, reading)

    async def _settle(self, queue: str, delivery: Delivery, error: BaseException | None) -> None:
        await self.broker.settle(queue, delivery, error)
        self.settled += 1
        if decide(error) is Outcome.DEAD_LETTER:
            metrics.JOBS_DEAD_LETTERED.inc()

    @property
    def in_flight(self) -> int:
        """Jobs delivered and not settled yet, and reads on its own, now."""
        return len(self._tasks)


def _count(reading: Reading) -> None:
    """Count a read in `emm_worker_reads_total` by its outcome and error code."""
    status = reading.status
    if not status.error_code:
        outcome = "ok"
    elif reading.fields:
        outcome = "partial"
    else:
        outcome = "failed"
    metrics.READS.labels(outcome, status.error_code).inc()
