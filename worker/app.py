"""The worker's loop: many jobs in flight on one event loop, each acked after its reading."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from emm.broker import JOBS, READINGS, Broker, Delivery
from emm.errors import BrokerError, MessageError
from emm.messages import Job, Reading
from emm.settings import WorkerSettings
from worker.modbus import DevicePool
from worker.reader import HoleMemory, read_job

log = logging.getLogger(__name__)


def _iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).isoformat(timespec="seconds")


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
        self.handled = 0  # jobs read and acked by this process
        self._tasks: set[asyncio.Task[None]] = set()

    async def on_delivery(self, delivery: Delivery) -> None:
        # Return at once so the consumer keeps receiving; the job runs as its own task.
        task = asyncio.create_task(self.handle(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def handle(self, delivery: Delivery) -> None:
        """Decode, read, publish the reading, then ack the job (or dead-letter a bad one)."""
        try:
            job = Job.decode(delivery.body)
        except MessageError as exc:
            log.error("malformed job dead-lettered to %s.dead: %s", JOBS, exc)
            await self._settle(delivery, exc)
            return
        if time.time() * 1000 > job.deadline_ms:
            log.warning("job %s arrived after its tick ended; skipped", job.job_id)
            await self._settle(delivery, None)
            return
        known = self.holes.unreadable(job.meter)
        reading = await read_job(
            job, self.pool, attempts=self.settings.read_attempts, holes=self.holes
        )
        report(job, reading, known)
        try:
            await self.broker.publish(READINGS, reading.encode(), message_id=reading.reading_id)
        except BrokerError as exc:
            log.error(
                "reading %s not confirmed (%s); the job goes back to the queue",
                reading.reading_id,
                exc,
            )
            await self._settle(delivery, exc)
            return
        await self._settle(delivery, None)
        self.handled += 1

    async def _settle(self, delivery: Delivery, error: BaseException | None) -> None:
        try:
            await self.broker.settle(JOBS, delivery, error)
        except BrokerError as exc:
            log.error("could not settle a job (%s); RabbitMQ will deliver it again", exc)

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
        try:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), timeout=5.0)
                except TimeoutError:
                    self.pool.close_idle()
        finally:
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=10)
            await self.broker.close()
            self.pool.close()


async def run(settings: WorkerSettings, stop: asyncio.Event | None = None) -> None:
    await Worker(settings).run(stop)
