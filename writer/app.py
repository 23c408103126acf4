"""The writer's loop: gather readings into batches, write them, ack only what InfluxDB took.

A batch is flushed when it reaches `batch_size` readings or `flush_interval_ms` after its first
reading arrived. While InfluxDB is unavailable the batch is retried with capped exponential
backoff and its messages stay unacked; RabbitMQ stops delivering once `prefetch` messages are
unacked, which bounds the writer's memory. A batch rejected with 400 is split until the bad
readings are isolated; those are dead-lettered and the rest is written.

For benchmarks, `EMM_WRITER_STATS_FILE` makes every successful write append one line per tick
it held, `written_ms tick_ms count`, so tick-to-stored latency can be measured; unset (the
default) it costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from functools import partial
from typing import TextIO

from broker import READINGS, Broker, Delivery
from emm import retry
from emm.errors import SinkRejected, SinkUnavailable
from emm.messages import Reading
from emm.schedule import CronSchedule
from emm.settings import WriterSettings
from writer.counters import CounterWatch, tick_counter
from writer.influx import Sink, make_sink
from writer.influxql import restore_counters
from writer.lines import delta_lines, reading_lines

log = logging.getLogger(__name__)

WRITES_IN_FLIGHT = 2  # batches written at once

Item = tuple[Delivery, Reading, list[str]]


class Writer:
    """Consumes `emm.readings` and writes them to `sink` in batches."""

    def __init__(self, settings: WriterSettings, sink: Sink | None = None) -> None:
        self.settings = settings
        self.prefetch = min(65535, settings.batch_size * 2)
        self.broker = Broker(settings.amqp_url, prefetch=self.prefetch, name="emm-writer")
        self.sink = sink or make_sink(settings)
        self._pending: list[Item] = []
        self._first_at: float | None = None
        self._wake = asyncio.Event()
        self._outage_since: float | None = None
        self._stop = asyncio.Event()
        self.written = 0
        cron = CronSchedule(settings.read_cron, setting="EMM_READ_CRON")
        self.counters = CounterWatch(tick_counter(cron.next_after))
        self._restored: asyncio.Task[None] | None = None  # the counters' history, at start
        self._stats: TextIO | None = None  # EMM_WRITER_STATS_FILE, open while running
        self._writes: set[asyncio.Task[None]] = set()  # batches being written

    async def on_delivery(self, delivery: Delivery) -> None:
        try:
            reading = Reading.decode(delivery.body)
            if self._restored is not None and not self._restored.done():
                await asyncio.shield(self._restored)
            seen = self.counters.observe(reading)
            lines = reading_lines(reading, seen.resets) + delta_lines(reading.meter, seen.deltas)
        except Exception as exc:
            # A malformed reading, or a fault of ours: settled as `emm.fate` says, never left
            # unacked for good.
            await self._settle(delivery, exc)
            return
        if not self._pending:
            self._first_at = time.monotonic()
        self._pending.append((delivery, reading, lines))
        if len(self._pending) >= self.settings.batch_size:
            self._wake.set()

    async def _settle(self, delivery: Delivery, error: BaseException | None) -> None:
        await self.broker.settle(READINGS, delivery, error)

    async def _write(self, items: list[Item]) -> None:
        """Write `items`, isolating rejected readings; raises SinkUnavailable to retry later."""
        lines = [line for _d, _r, item_lines in items for line in item_lines]
        try:
            await asyncio.to_thread(self.sink.write, lines)
            if self._stats is not None:
                self._record(items)
        except SinkRejected as exc:
            if len(items) == 1:
                await self._settle(items[0][0], exc)
                return
            half = len(items) // 2
            await self._write(items[:half])
            await self._write(items[half:])
            return
        for delivery, _reading, _lines in items:
            await self._settle(delivery, None)
        self.written += len(items)

    def _record(self, items: list[Item]) -> None:
        """Append `written_ms tick_ms count` per tick of a batch InfluxDB just took."""
        assert self._stats is not None
        written_ms = int(time.time() * 1000)
        ticks = Counter(reading.tick_ms for _d, reading, _lines in items)
        self._stats.write("".join(f"{written_ms} {t} {n}\n" for t, n in ticks.items()))
        self._stats.flush()

    async def flush(self) -> None:
        """Write the oldest batch, retrying until InfluxDB takes it (or the writer stops: its
        readings then stay unacked and RabbitMQ delivers them again)."""
        batch = self._pending[: self.settings.batch_size]
        if not batch:
            return
        del self._pending[: len(batch)]
        self._first_at = time.monotonic() if self._pending else None
        started = time.monotonic()
        try:
            await retry.sink_write(self.settings.retry_max_s).call(
                partial(self._write, batch),
                stop=lambda _state: self._stop.is_set(),
                on_retry=partial(self._failing, len(batch)),
            )
        except SinkUnavailable:
            return  # stopping: the batch stays unacked
        if self._outage_since is not None:
            log.info("InfluxDB is back after %.0f s", time.monotonic() - self._outage_since)
            self._outage_since = None
        log.debug("wrote %d readings in %.0f ms", len(batch), (time.monotonic() - started) * 1000)

    def _failing(self, readings: int, exc: BaseException, _wait_s: float) -> None:
        """Log the start of an InfluxDB outage, then each retry."""
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.error("%s; keeping %d readings unacked and retrying", exc, readings)
        else:
            log.warning(
                "still failing after %.0f s: %s", time.monotonic() - self._outage_since, exc
            )

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = self._stop = stop or asyncio.Event()
        if self.settings.stats_file:
            self._stats = open(self.settings.stats_file, "a", encoding="ascii")  # noqa: SIM115
        await self.broker.connect()
        self._restored = asyncio.create_task(restore_counters(self.counters, self.settings, stop))
        await self.broker.consume(READINGS, self.on_delivery)
        log.info(
            "writer started: %s API, batches of %d readings or %d ms",
            self.settings.influx_api,
            self.settings.batch_size,
            self.settings.flush_interval_ms,
        )
        interval_s = self.settings.flush_interval_ms / 1000

        async def wake_on_stop() -> None:
            await stop.wait()
            self._wake.set()

        relay = asyncio.create_task(wake_on_stop())
        try:
            while not stop.is_set():
                if self._first_at is None:
                    timeout = interval_s
                else:
                    timeout = max(0.0, self._first_at + interval_s - time.monotonic())
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=timeout)
                except TimeoutError:
                    pass
                self._wake.clear()
                if stop.is_set():
                    break
                due = self._first_at is not None and (
                    time.monotonic() - self._first_at >= interval_s
                    or len(self._pending) >= self.settings.batch_size
                )
                if due:
                    # Up to WRITES_IN_FLIGHT batches at once: the next batch fills and goes
                    # while InfluxDB is still taking the previous one.
                    while len(self._writes) >= WRITES_IN_FLIGHT:
                        await asyncio.wait(self._writes, return_when=asyncio.FIRST_COMPLETED)
                    write = asyncio.create_task(self.flush())
                    self._writes.add(write)
                    write.add_done_callback(self._writes.discard)
                    self._wake.set()  # a full batch may be waiting behind this one
            # Finish what InfluxDB will take now; what is left stays unacked and is redelivered.
            if self._writes:
                await asyncio.wait(self._writes, timeout=5)
            if self._pending:
                try:
                    await asyncio.wait_for(self._write(list(self._pending)), timeout=5)
                except (TimeoutError, SinkUnavailable):
                    pass
        finally:
            relay.cancel()
            if self._restored is not None:
                self._restored.cancel()
            await self.broker.close()
            self.sink.close()
            if self._stats is not None:
                self._stats.close()
                self._stats = None


async def run(settings: WriterSettings, stop: asyncio.Event | None = None) -> None:
    await Writer(settings).run(stop)
