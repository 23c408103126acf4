"""The worker's wiring: many jobs in flight on one event loop, each acked after its reading.

The parts: the shards (`worker.shards`) decide which shard queues of the jobs this worker owns
and hand the rest over; the consumer (`worker.consumer`) reads their jobs and settles them; the
devices (`worker.device`) carry each device's link, health and learned holes across ticks; the
reader (`worker.reader`) reads one job; the outbox (`worker.outbox`) publishes the readings;
the replay (`worker.replay`) reads on its own while RabbitMQ is away; the budget
(`worker.budget`) reports each gateway's load per tick. `Worker` builds them, runs
the housekeeping every few seconds and shuts them down in order.

Delivery guarantees (see the README's "Guarantees"):
- A job is acked only once RabbitMQ confirmed its reading. A reading that cannot be published
  (broker down) waits in the outbox and is published when the broker is back.
- A job delivered again (its ack was lost with the connection) is answered from the recent
  readings instead of reading the device a second time.
- A job that reaches a worker, or gets a connection to its gateway, more than half a tick after
  its tick is not read: the value would not belong to the tick's timestamp.
- While RabbitMQ is unreachable no jobs arrive, so the worker keeps reading, on the same ticks,
  the meters of the last tick it was given; those readings wait in the outbox too.
- A gateway is read by the one worker that owns its shard; a shard changes hands only once its
  old owner has closed its connections to the shard's gateways (see `worker.shards`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from broker import Broker
from emm.health import Progress, Sample, default_path
from emm.log import Summary, amqp_where
from emm.metrics import by_label, total
from emm.service import unless_stopped
from emm.settings import WorkerSettings
from worker import metrics
from worker.consumer import Consumer
from worker.device import Devices
from worker.health import OfflinePolicy
from worker.modbus import DevicePool
from worker.outbox import Outbox
from worker.replay import Replay
from worker.shards import Shards

log = logging.getLogger(__name__)

HOUSEKEEPING_S = 5.0  # how often idle links close, old readings go and late jobs are summed up
SHUTDOWN_OUTBOX_S = 5.0  # at most, of what is left of EMM_DRAIN_S, for the readings left
READ_OUTCOMES = ("ok", "partial", "failed", "skipped_offline")


class Worker:
    """One worker process: consumes the shards of the jobs; `concurrency` jobs (the prefetch) of
    each shard it owns at once."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.broker = Broker(settings.amqp_url, prefetch=settings.concurrency, name="emm-worker")
        links = DevicePool(
            timeout_s=settings.read_timeout_s,
            connect_timeout_s=settings.connect_timeout_s,
            idle_close_s=settings.idle_close_s,
        )
        policy = OfflinePolicy(settings.offline_after_ticks, settings.offline_backoff_max_s)
        self.devices = Devices(links, policy)
        self.outbox = Outbox(self.broker)
        self.replay = Replay(self.broker, self.outbox, outbox_max=settings.outbox_max)
        self.consumer = Consumer(
            self.broker,
            self.devices,
            self.outbox,
            self.replay,
            read_attempts=settings.read_attempts,
        )
        self.shards = Shards(self.broker, self.consumer, self.devices, self.replay)
        self.broker.connect_callbacks.append(self.shards.on_connect)
        self.broker.disconnect_callbacks.append(self.shards.on_disconnect)
        metrics.watch(
            connected=lambda: self.broker.connected,
            outbox=lambda: self.outbox.pending,
            devices=self.devices.states,
            oldest_tick_ms=self.consumer.oldest_tick_ms,
        )
        self.summary = Summary(log, _counts, settings.log_summary_s)
        path = Path(settings.health_file or default_path("worker"))
        self.health = Progress("worker", path, settings.health_stall_s)

    def progress(self) -> Sample:
        """The health sample: jobs in flight wait to be settled, readings to be confirmed.

        While RabbitMQ is away nothing can be settled or confirmed, and the worker does what it
        should (reads on its own, keeps the readings): not a stall, and a restart would lose
        the outbox, so nothing counts as waiting then."""
        if not self.broker.connected:
            self.health.note = "RabbitMQ unreachable: reading on its own, keeping the readings"
            return {"job": (self.consumer.settled, 0), "reading": (self.outbox.confirmed, 0)}
        if self.health.note.startswith("RabbitMQ"):
            self.health.note = ""
        return {
            "job": (self.consumer.settled, self.consumer.in_flight),
            "reading": (self.outbox.confirmed, self.outbox.pending),
        }

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Consume jobs until `stop` is set, then shut down in order."""
        stop = stop or asyncio.Event()
        beat = asyncio.create_task(self.health.run(stop, self.progress))
        try:
            if await unless_stopped(stop, self.broker.connect()):
                await self._run(stop)
        finally:
            stop.set()
            await beat

    async def _run(self, stop: asyncio.Event) -> None:
        log.info(
            "worker started: %s; %d jobs in flight at most, read timeout %.2f s, %d attempts",
            amqp_where(self.settings.amqp_url),
            self.settings.concurrency,
            self.settings.read_timeout_s,
            self.settings.read_attempts,
        )
        # One publisher per job in flight: each waits for its confirm, which RabbitMQ gives only
        # once a persistent message is on disk (often 100-200 ms under load), so fewer would
        # make readings queue for the confirms of others while their jobs hold the prefetch.
        self.outbox.start(self.settings.concurrency)
        replayer = asyncio.create_task(self.replay.run(stop, self.consumer.read_later))
        # each gateway's load per tick, to `gateway_status` (`worker.budget`)
        budget = asyncio.create_task(self.devices.budget.run(stop, self.broker))
        summaries = asyncio.create_task(self.summary.run(stop))
        try:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), timeout=HOUSEKEEPING_S)
                except TimeoutError:
                    self._housekeeping()
        finally:
            budget.cancel()
            summaries.cancel()
            await self._shut_down(replayer)
            log.info("worker stopped %s", self.summary.final())

    def _housekeeping(self) -> None:
        self.devices.close_idle()
        self.outbox.prune()
        self.consumer.report_late()

    async def _shut_down(self, replayer: asyncio.Task[None]) -> None:
        """Stop replaying and drain (`Shards.drain`): stop consuming, let the jobs in flight
        finish within `EMM_DRAIN_S` and requeue the rest, the devices' connections closed
        before the shards go to other workers; then the readings left reach RabbitMQ."""
        started = time.monotonic()
        self.consumer.report_late()
        replayer.cancel()
        self.health.note = "stopping"
        finished, requeued = await self.shards.drain(self.settings.drain_s)
        # only readings of requeued jobs are left: their jobs are read again anyway
        left_s = self.settings.drain_s - (time.monotonic() - started)
        await self.outbox.stop(max(0.0, min(SHUTDOWN_OUTBOX_S, left_s)))
        await self.broker.close()
        log.info(
            "drained in %.1f s: %d jobs in flight finished, %d requeued",
            time.monotonic() - started,
            finished,
            requeued,
        )


def _counts() -> dict[str, float]:
    """The worker's totals for its summary lines, from its metrics."""
    reads = by_label(metrics.READS, "outcome")
    counts: dict[str, float] = {
        "jobs": total(metrics.JOBS_CONSUMED),
        "late": total(metrics.JOBS_LATE),
        "dead-lettered": total(metrics.JOBS_DEAD_LETTERED),
        **{f"reads {outcome}": reads.get(outcome, 0) for outcome in READ_OUTCOMES},
        "readings published": total(metrics.READINGS_PUBLISHED),
    }
    failures = by_label(metrics.READS, "error_code")
    failures.pop("", None)
    counts.update({f"error {code}": n for code, n in sorted(failures.items())})
    return counts


async def run(settings: WorkerSettings, stop: asyncio.Event | None = None) -> None:
    await Worker(settings).run(stop)
