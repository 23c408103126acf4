"""The writer's loop: gather readings into batches, write them, ack only what InfluxDB took.

`emm.readings` also carries the workers' gateway statuses; each becomes a `gateway_status`
point, batched and acked like a reading.

A batch is flushed when it reaches `batch_size` readings or `batch_bytes` bytes of line
protocol, or `flush_interval_ms` after its first reading arrived. While InfluxDB is unavailable
the batch is retried with capped exponential backoff and its messages stay unacked; RabbitMQ
stops delivering once `prefetch` messages are unacked, which bounds the writer's memory.

The writer never stalls on a reading or a batch:
- a reading that can never be written (malformed, too large, a tick far from now, a tag or field
  name line protocol cannot carry, text that is not valid Unicode) is dead-lettered alone when
  it arrives, with the reason;
- a batch InfluxDB refuses (400, or 413 when it is over the server's body limit) is split until
  the refused readings are isolated; those are dead-lettered and the rest is written;
- an unexpected error while writing is treated the same way: the batch is split and only the
  readings that still fail alone are settled as `emm.fate` says (dead-lettered), with the error
  logged; nothing is left unacked;
- a flush task that fails anyway is logged and its readings settled.

For benchmarks, `EMM_WRITER_STATS_FILE` makes every successful write append one line per tick
it held, `written_ms tick_ms count`, so tick-to-stored latency can be measured; unset (the
default) it costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TextIO

from broker import READINGS, Broker, Delivery
from emm import retry
from emm.errors import MessageError, SinkRejected, SinkUnavailable
from emm.fate import Outcome, decide
from emm.health import Progress, Sample, default_path
from emm.limits import MAX_READING_BYTES, check_size
from emm.log import Summary, amqp_where, context, influx_where
from emm.messages import GatewayStatus, Reading, decode_result
from emm.metrics import total
from emm.schedule import CronSchedule
from emm.service import unless_stopped
from emm.settings import WriterSettings
from writer import metrics
from writer.counters import CounterWatch, tick_counter
from writer.influx import Sink, check, make_sink
from writer.influxql import restore_counters
from writer.lines import (
    Unwritable,
    delta_lines,
    gateway_status_lines,
    reading_bytes,
    suspect_lines,
)
from writer.plausibility import PlausibilityGuard, without

log = logging.getLogger(__name__)

WRITES_IN_FLIGHT = 2  # batches written at once
SHUTDOWN_WRITE_S = 5.0  # at stop, how long the readings held may take to be written


@dataclass(slots=True, eq=False)
class Item:
    """One reading held by the writer: its delivery, and its line protocol."""

    delivery: Delivery
    reading: Reading | GatewayStatus
    data: bytes
    settled: bool = False

    @property
    def size(self) -> int:
        return len(self.data) + 1  # and its newline


def _what(message: Reading | GatewayStatus) -> str:
    """How a log line or a dead-letter reason names a message of `emm.readings`."""
    if isinstance(message, Reading):
        return f"reading {message.reading_id}"
    return f"gateway_status {message.name}@{message.tick_ms}"


def _context(message: Reading | GatewayStatus) -> dict[str, object]:
    if isinstance(message, Reading):
        m = message.meter
        return context(meter_id=m.id, gateway=f"{m.host}:{m.port}", tick_ms=message.tick_ms)
    return context(gateway=message.name, tick_ms=message.tick_ms)


def _kind(message: Reading | GatewayStatus) -> str:
    """The `kind` label of a message of `emm.readings`."""
    return "reading" if isinstance(message, Reading) else "gateway_status"


def _count_settled(error: BaseException | None) -> None:
    if decide(error) is Outcome.DEAD_LETTER:
        metrics.DEAD_LETTERED.inc()


def _counts() -> dict[str, float]:
    """The writer's totals for its summary lines, from its metrics."""
    return {
        "readings consumed": total(metrics.CONSUMED, kind="reading"),
        "readings written": total(metrics.WRITTEN, kind="reading"),
        "gateway statuses written": total(metrics.WRITTEN, kind="gateway_status"),
        "batches": total(metrics.BATCH_SIZE),
        "dead-lettered": total(metrics.DEAD_LETTERED),
        "write failures": total(metrics.WRITE_FAILURES),
    }


def _iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).isoformat(timespec="seconds")


class Writer:
    """Consumes `emm.readings` and writes them to `sink` in batches."""

    def __init__(self, settings: WriterSettings, sink: Sink | None = None) -> None:
        self.settings = settings
        self.prefetch = min(65535, settings.batch_size * 2)
        self.broker = Broker(settings.amqp_url, prefetch=self.prefetch, name="emm-writer")
        self.sink = sink or make_sink(settings)
        self.sink_where = influx_where(
            settings.influx_url, settings.influx_api, settings.influx_bucket, settings.influx_org
        )
        metrics.watch(connected=lambda: self.broker.connected, held=lambda: len(self._pending))
        self.summary = Summary(log, _counts, settings.log_summary_s)
        self._check_sink = sink is None  # a sink given (tests) is not the configured server
        self.influx = retry.Outage(f"InfluxDB at {settings.influx_url}", log)
        self._pending: list[Item] = []
        self._pending_bytes = 0
        self._first_at: float | None = None
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self.written = 0
        cron = CronSchedule(settings.read_cron, setting="EMM_READ_CRON")
        self.counters = CounterWatch(tick_counter(cron.next_after))
        self.plausibility = PlausibilityGuard(self.counters)
        self._restored: asyncio.Task[None] | None = None  # the counters' history, at start
        self._stats: TextIO | None = None  # EMM_WRITER_STATS_FILE, open while running
        self._writes: set[asyncio.Task[None]] = set()  # batches being written
        self.received = 0  # readings delivered (health: received - settled are held)
        self.settled = 0  # readings settled: written, or dead-lettered (health's progress)
        path = Path(settings.health_file or default_path("writer"))
        self.health = Progress("writer", path, settings.health_stall_s)

    def progress(self) -> Sample:
        """The health sample: readings held unacked wait to be written."""
        return {"reading": (self.settled, self.received - self.settled)}

    async def on_delivery(self, delivery: Delivery) -> None:
        self.received += 1
        try:
            check_size("reading", delivery.body, MAX_READING_BYTES)
            reading = decode_result(delivery.body)
            far = self._tick_problem(reading.tick_ms)
            if far is not None:
                raise MessageError(f"{_what(reading)}: {far}", delivery.body)
            try:
                if isinstance(reading, Reading):
                    if self._restored is not None and not self._restored.done():
                        await asyncio.shield(self._restored)
                    suspect = self.plausibility.check(reading)
                    stored = without(reading, suspect)
                    seen = self.counters.observe(stored)
                    more = delta_lines(reading.meter, seen.deltas)
                    more += suspect_lines(reading, list(suspect))
                    data = reading_bytes(stored, seen.resets, more, list(suspect))
                else:
                    data = "\n".join(gateway_status_lines(reading)).encode()
            except (Unwritable, UnicodeEncodeError) as exc:
                raise MessageError(
                    f"{_what(reading)} cannot be written: {exc}", delivery.body
                ) from None
        except Exception as exc:
            # A reading that can never be written, or a fault of ours: settled alone as
            # `emm.fate` says, never left unacked for good.
            await self.broker.settle(READINGS, delivery, exc)
            self.settled += 1
            _count_settled(exc)
            return
        metrics.CONSUMED.labels(_kind(reading)).inc()
        if not self._pending:
            self._first_at = time.monotonic()
        item = Item(delivery, reading, data)
        self._pending.append(item)
        self._pending_bytes += item.size
        if self._batch_full():
            self._wake.set()

    def _tick_problem(self, tick_ms: int) -> str | None:
        """Why a reading of `tick_ms` is refused (too far ahead of or behind this writer's
        clock: it was not made by a worker for a tick of now), or None."""
        now_ms = time.time() * 1000
        ahead_s = (tick_ms - now_ms) / 1000
        if ahead_s > self.settings.max_future_s:
            return (
                f"tick {_iso(tick_ms)} is {ahead_s:.0f} s in the future (at most "
                f"{WriterSettings.variable('max_future_s')}={self.settings.max_future_s:g} s)"
            )
        if -ahead_s > self.settings.max_age_s:
            return (
                f"tick {_iso(tick_ms)} is {-ahead_s:.0f} s old (at most "
                f"{WriterSettings.variable('max_age_s')}={self.settings.max_age_s:g} s)"
            )
        return None

    def _batch_full(self) -> bool:
        return (
            len(self._pending) >= self.settings.batch_size
            or self._pending_bytes >= self.settings.batch_bytes
        )

    async def _settle(self, item: Item, error: BaseException | None) -> None:
        if not item.settled:
            item.settled = True
            self.settled += 1
            about = _context(item.reading)
            await self.broker.settle(READINGS, item.delivery, error, about)
            _count_settled(error)

    def _take_batch(self) -> list[Item]:
        """The oldest readings held, up to `batch_size` of them and `batch_bytes` bytes (at
        least one, however large: InfluxDB may still take it, or refuse it alone)."""
        count = size = 0
        for item in self._pending:
            if count and (
                count >= self.settings.batch_size or size + item.size > self.settings.batch_bytes
            ):
                break
            count += 1
            size += item.size
        batch = self._pending[:count]
        del self._pending[:count]
        self._pending_bytes -= size
        self._first_at = time.monotonic() if self._pending else None
        return batch

    async def _store(self, items: list[Item]) -> None:
        """Write `items`, splitting a refused batch until the refused readings are alone, and
        settle each; raises SinkUnavailable only when stopping (the rest stays unacked)."""
        try:
            await self._send(items)
        except SinkUnavailable:
            raise
        except Exception as exc:
            if len(items) == 1:
                await self._settle(items[0], exc)
                return
            if not isinstance(exc, SinkRejected):
                log.error(
                    "writing %d readings failed; splitting the batch", len(items), exc_info=exc
                )
            half = len(items) // 2
            await self._store(items[:half])
            await self._store(items[half:])
            return
        self.influx.over()
        if self._stats is not None:
            self._record(items)
        for item in items:
            await self._settle(item, None)
        self._count_written(items)

    def _count_written(self, items: list[Item]) -> None:
        """Count a batch InfluxDB took; the first one is worth a line."""
        kinds = Counter(_kind(item.reading) for item in items)
        for kind, n in kinds.items():
            metrics.WRITTEN.labels(kind).inc(n)
        metrics.BATCH_SIZE.observe(len(items))
        if not self.written:
            log.info(
                "first batch written: %d reading(s), %d gateway status(es) to %s",
                kinds["reading"],
                kinds["gateway_status"],
                self.sink_where,
            )
        self.written += len(items)

    async def _write_once(self, chunks: list[bytes]) -> None:
        started = time.monotonic()
        await asyncio.to_thread(self.sink.write, chunks)
        metrics.WRITE_SECONDS.observe(time.monotonic() - started)

    async def _send(self, items: list[Item]) -> None:
        """One write of `items`, retried while InfluxDB is unavailable (until the writer
        stops: SinkUnavailable then)."""
        chunks = [item.data for item in items]
        await retry.sink_write(self.settings.retry_max_s).call(
            partial(self._write_once, chunks),
            stop=lambda _state: self._stop.is_set(),
            on_retry=partial(self._failing, len(items)),
            sleep=self._pause,
        )

    async def _pause(self, wait_s: float) -> None:
        """The wait before the next write, cut short when the writer stops (the retries end
        then: what is held stays unacked and RabbitMQ delivers it again)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=wait_s)
        if self._stop.is_set():
            raise SinkUnavailable("the writer is stopping")

    def _record(self, items: list[Item]) -> None:
        """Append `written_ms tick_ms count` per tick of a batch InfluxDB just took."""
        assert self._stats is not None
        written_ms = int(time.time() * 1000)
        ticks = Counter(item.reading.tick_ms for item in items if isinstance(item.reading, Reading))
        try:
            self._stats.write("".join(f"{written_ms} {t} {n}\n" for t, n in ticks.items()))
            self._stats.flush()
        except OSError as exc:  # the readings are stored: a benchmark's file must not undo that
            log.warning("cannot append to EMM_WRITER_STATS_FILE: %s", exc)

    async def flush(self) -> None:
        """Write the oldest batch, retrying until InfluxDB takes it (or the writer stops: its
        readings then stay unacked and RabbitMQ delivers them again)."""
        batch = self._take_batch()
        if not batch:
            return
        started = time.monotonic()
        try:
            await self._store(batch)
        except SinkUnavailable:
            return  # stopping: the batch stays unacked
        except Exception as exc:
            # Not a write failing (those are split and settled): a fault of ours. Settle what is
            # left as `emm.fate` says rather than leave it unacked in the prefetch for good.
            log.error("flushing %d readings failed", len(batch), exc_info=exc)
            for item in batch:
                await self._settle(item, exc)
            return
        log.debug("wrote %d readings in %.0f ms", len(batch), (time.monotonic() - started) * 1000)

    def _flushed(self, task: asyncio.Task[None]) -> None:
        """A flush task's end: forget it, and log what it raised (nothing should)."""
        self._writes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a flush failed", exc_info=task.exception())

    def _failing(self, readings: int, exc: BaseException, _wait_s: float) -> None:
        """Log the start of an InfluxDB outage (its end is logged by the write that works);
        each batch in flight retries on its own, and the outage is still one line."""
        metrics.WRITE_FAILURES.inc()
        self.influx.failed(f"{exc}; keeping {readings} readings unacked")

    async def _check(self, stop: asyncio.Event) -> bool:
        """At start: wait for InfluxDB to answer (False: `stop` was set meanwhile); raises
        Misconfigured when writes as configured cannot work (the other API, no such database
        or bucket, credentials refused)."""
        try:
            found = await retry.SINK_CHECK.call(
                partial(asyncio.to_thread, check, self.settings),
                stop=lambda _state: stop.is_set(),
                on_retry=self.influx.failed,
            )
        except SinkUnavailable:
            return False
        self.influx.over()
        log.info("writing to %s", found)
        return True

    async def _store_held(self) -> None:
        """Write every reading still held, batch by batch (at stop)."""
        while self._pending:
            await self._store(self._take_batch())

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = self._stop = stop or asyncio.Event()
        beat = asyncio.create_task(self.health.run(stop, self.progress))
        try:
            if self._check_sink:
                checked = asyncio.ensure_future(self._check(stop))
                if not await unless_stopped(stop, checked) or not checked.result():
                    return  # stopped while waiting for InfluxDB
            if self.settings.stats_file:
                self._stats = open(self.settings.stats_file, "a", encoding="ascii")  # noqa: SIM115
            if await unless_stopped(stop, self.broker.connect()):
                await self._serve(stop)
        finally:
            self.sink.close()
            if self._stats is not None:
                self._stats.close()
                self._stats = None
            stop.set()
            await beat

    async def _serve(self, stop: asyncio.Event) -> None:
        """Consume and write until `stop`, then write what InfluxDB takes of what is held."""
        self._restored = asyncio.create_task(restore_counters(self.counters, self.settings, stop))
        await self.broker.consume(READINGS, self.on_delivery)
        log.info(
            "writer started: %s; %s; batches of %d readings, %d bytes or %d ms",
            amqp_where(self.settings.amqp_url),
            self.sink_where,
            self.settings.batch_size,
            self.settings.batch_bytes,
            self.settings.flush_interval_ms,
        )

        async def wake_on_stop() -> None:
            await stop.wait()
            self._wake.set()

        relay = asyncio.create_task(wake_on_stop())
        summaries = asyncio.create_task(self.summary.run(stop))
        try:
            await self._flush_until(stop)
            await self._finish()
        finally:
            relay.cancel()
            summaries.cancel()
            log.info("writer stopped %s", self.summary.final())
            if self._restored is not None:
                self._restored.cancel()
            await self.broker.close()

    async def _flush_until(self, stop: asyncio.Event) -> None:
        """Flush a batch whenever one is full or its first reading waited the flush interval."""
        interval_s = self.settings.flush_interval_ms / 1000
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
                time.monotonic() - self._first_at >= interval_s or self._batch_full()
            )
            if due:
                # Up to WRITES_IN_FLIGHT batches at once: the next batch fills and goes
                # while InfluxDB is still taking the previous one.
                while len(self._writes) >= WRITES_IN_FLIGHT:
                    await asyncio.wait(self._writes, return_when=asyncio.FIRST_COMPLETED)
                write = asyncio.create_task(self.flush())
                self._writes.add(write)
                write.add_done_callback(self._flushed)
                self._wake.set()  # a full batch may be waiting behind this one

    async def _finish(self) -> None:
        """At stop: finish what InfluxDB will take now; what is left stays unacked and is
        redelivered."""
        if self._writes:
            await asyncio.wait(self._writes, timeout=SHUTDOWN_WRITE_S)
        try:
            await asyncio.wait_for(self._store_held(), timeout=SHUTDOWN_WRITE_S)
        except (TimeoutError, SinkUnavailable):
            pass
        except Exception:
            # unacked, so RabbitMQ delivers them again: worth a line, not a crash at stop
            log.exception("writing the readings held at stop failed")


async def run(settings: WriterSettings, stop: asyncio.Event | None = None) -> None:
    await Writer(settings).run(stop)
