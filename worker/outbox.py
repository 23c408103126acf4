"""The outbox: readings waiting for RabbitMQ's confirm, and the recent ones kept for redeliveries.

A reading is put in the outbox as soon as it is read; publishers take it from there and publish
it to `emm.readings` with publisher confirms, waiting out broker outages, and mark it confirmed,
which is what lets the consumer ack its job. The outbox also keeps every reading by its job id
for as long as its job, delivered again (its ack lost with the connection), could still be read
in time: such a job is answered from here instead of reading the device a second time.

While publishing fails the outbox logs one line when it starts, and one when every reading held
meanwhile is published, with how many they were.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from broker import READINGS, Broker
from emm import retry
from emm.messages import Job, Reading
from worker import metrics
from worker.ticks import now_ms

log = logging.getLogger(__name__)


OUTAGE_STARTED = "outbox: readings not published since {since}: {error}; holding them"
OUTAGE_ENDED = "outbox: RabbitMQ back after {after_s:.0f} s"  # + how many were published


@dataclass
class Outgoing:
    """A reading on its way to `emm.readings`; `confirmed` is set once RabbitMQ has it."""

    reading: Reading
    keep_until_ms: int  # a job delivered again after this is not read anyway (too late)
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)
    held: bool = False  # waited out an outage: counted when it is published


class Outbox:
    """The readings of one worker process until RabbitMQ confirmed them, and a while after."""

    def __init__(self, broker: Broker, clock: Callable[[], int] = now_ms) -> None:
        self.broker = broker
        self.clock = clock
        # job id -> its reading, for jobs delivered again; kept for a few ticks
        self._recent: OrderedDict[str, Outgoing] = OrderedDict()
        self._outbox: asyncio.Queue[Outgoing] = asyncio.Queue()
        self._pending = 0  # readings in the outbox, not yet confirmed
        self.confirmed = 0  # readings RabbitMQ confirmed (health's progress)
        self._publishers: list[asyncio.Task[None]] = []
        self.outage = retry.Outage("RabbitMQ", log, started=OUTAGE_STARTED, ended=OUTAGE_ENDED)
        self._held = 0  # readings held by the outage, not yet published
        self._held_published = 0  # and published

    @property
    def pending(self) -> int:
        """How many readings wait for RabbitMQ's confirm."""
        return self._pending

    def recent(self, job_id: str) -> Outgoing | None:
        """The reading already taken for the job `job_id`, while it is kept."""
        return self._recent.get(job_id)

    def put(self, job: Job, reading: Reading) -> Outgoing:
        """Queue `job`'s reading for publishing and keep it for a redelivery of `job`."""
        period_ms = job.deadline_ms - job.tick_ms
        out = Outgoing(reading, keep_until_ms=job.deadline_ms + period_ms)
        self._recent[job.job_id] = out
        self._recent.move_to_end(job.job_id)
        self._pending += 1
        if self.outage.active:
            self._hold(out)
        self._outbox.put_nowait(out)
        return out

    def _hold(self, out: Outgoing) -> None:
        if not out.held:
            out.held = True
            self._held += 1

    def _not_confirmed(self, out: Outgoing, exc: BaseException, _wait_s: float) -> None:
        log.debug("reading %s not confirmed yet: %s", out.reading.reading_id, exc)
        self.outage.failed(exc)
        self._hold(out)

    def _published(self, out: Outgoing) -> None:
        """Count a held reading out; the end line once the last one is."""
        if out.held:
            self._held -= 1
            self._held_published += 1
            if self._held == 0:
                self.outage.over(f"; {self._held_published} buffered readings published")
                self._held_published = 0

    def start(self, publishers: int) -> None:
        """Start `publishers` publishers, each publishing one reading at a time."""
        self._publishers = [asyncio.create_task(self._publisher()) for _ in range(publishers)]

    async def stop(self, grace_s: float) -> None:
        """Give readings still in the outbox `grace_s` to reach RabbitMQ, then stop publishing;
        what does not make it is read again from the redelivered jobs."""
        deadline = time.monotonic() + grace_s
        while self._pending and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for publisher in self._publishers:
            publisher.cancel()

    async def _publisher(self) -> None:
        """Publish queued readings with confirms, waiting out broker outages."""
        while True:
            out = await self._outbox.get()
            reading_id = out.reading.reading_id
            await retry.OUTBOX_PUBLISH.call(
                partial(
                    self.broker.publish,
                    READINGS,
                    out.reading.encode(),
                    exchange=READINGS,
                    message_id=reading_id,
                ),
                on_retry=partial(self._not_confirmed, out),
            )
            out.confirmed.set()
            self._pending -= 1
            self.confirmed += 1
            self._published(out)
            metrics.READINGS_PUBLISHED.inc()

    def prune(self) -> None:
        """Forget confirmed readings whose jobs, if delivered again, would be too late to read:
        such a job is acked without a read either way, so the reading is no longer needed."""
        now = self.clock()
        while self._recent:
            out = next(iter(self._recent.values()))
            if out.keep_until_ms >= now or not out.confirmed.is_set():
                break
            self._recent.popitem(last=False)
