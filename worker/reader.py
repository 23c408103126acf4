"""Reading one job: planned requests over a connection to its gateway, retried within the tick,
decoded.

The steps: the job waits for a connection to its gateway (and is dropped as late if it got one
more than half a tick after its tick); each planned request is sent (retried while the tick
leaves time, `_Requests`); one that crosses a hole in the device's map is split
(`worker.holes`) and the split is remembered by the device; the words are decoded into the
reading's values (`_Values`); and the outcome becomes the reading's status (`_status`).

One dead unit must not push the other units of its gateway past the tick: while other jobs wait
for the gateway, a unit whose last request went unanswered gets one attempt per job, which waits
a fraction of the timeout (`SILENT_TIMEOUT_SHARE`) once they wait, also when they start waiting
while it is out. It keeps the full budget while nobody waits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial

from emm import retry
from emm.codec import RequestDecoder
from emm.errors import (
    DecodeError,
    DeviceError,
    NoAnswer,
    PermanentDeviceError,
    TransientDeviceError,
)
from emm.messages import Job, Meter, Reading, Status
from emm.modbus import ILLEGAL_DATA_ADDRESS
from emm.planner import ReadRequest
from emm.text import quote
from worker import metrics
from worker.device import Device
from worker.holes import request_for, split_halves
from worker.modbus import DeviceLink
from worker.ticks import now_ms

log = logging.getLogger(__name__)

# Leave this much of the tick for publishing the reading after the last read attempt.
PUBLISH_MARGIN_S = 0.2
# A silent unit's one attempt while others wait waits this share of the gateway's timeout. A
# unit that stopped answering most likely still does not (powered off, unplugged, a wrong unit
# id), and each full timeout it costs is taken from its neighbours' tick; a unit that is back
# answers a small read well within half the timeout (an 80-register answer takes under 0.2 s at
# 9600 baud), so it is still found again at once.
SILENT_TIMEOUT_SHARE = 0.5


class _Requests:
    """Sends a job's requests over a connection to its gateway, retrying transient failures
    while the tick leaves time; counts the requests sent and those the device answered, and
    notes in the device's health whether its last request went unanswered."""

    def __init__(
        self, device: Device, link: DeviceLink, attempts: int, started: float, budget_s: float
    ) -> None:
        self.device = device
        self.link = link
        self.unit_id = device.unit_id
        self.attempts = attempts
        self.started = started
        self.budget_s = budget_s
        self.sent = 0
        self.answered = 0
        self.latency = metrics.MODBUS_REQUEST.labels(link.name)

    def _short(self) -> bool:
        """Whether the device gets the short budget: silent, and others wait for the gateway."""
        return self.device.health.silent and self.device.gateway.waiting > 0

    async def once(self, request: ReadRequest) -> list[int]:
        self.sent += 1
        short_s = self.link.timeout_s * SILENT_TIMEOUT_SHARE
        timeout_s = short_s if self._short() else self.link.timeout_s
        started = time.monotonic()
        try:
            if self.device.health.silent and timeout_s > short_s:
                words = await self._hurried(request, timeout_s, short_s)
            else:
                words = await self._read(request, timeout_s)
        except DeviceError as exc:
            if exc.answered:
                self.answered += 1  # an exception answer from the device: it is up
            self.device.health.silent = isinstance(exc, NoAnswer)
            if exc.code != "unreachable":  # not connected: no request went out
                self.latency.observe(time.monotonic() - started)
            raise
        self.latency.observe(time.monotonic() - started)
        self.answered += 1
        self.device.health.silent = False
        return words

    async def _read(self, request: ReadRequest, timeout_s: float) -> list[int]:
        return await self.link.read(
            request.function_code, request.address, request.count, self.unit_id, timeout_s=timeout_s
        )

    async def _hurried(self, request: ReadRequest, timeout_s: float, short_s: float) -> list[int]:
        """A silent device's request sent while nobody waited: cut to `short_s` once another
        job starts waiting for the gateway (the first job of a tick often starts alone)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(None) as budget:

                def hurry() -> None:
                    budget.reschedule(max(loop.time(), started + short_s))

                with self.device.gateway.on_wait(hurry):
                    return await self._read(request, timeout_s)
        except TimeoutError:
            # ours: the link's own timeout is a NoAnswer already. An answer may still come on
            # this connection, so it starts afresh.
            self.link.close()
            raise NoAnswer(
                f"{self.link.name} unit {self.unit_id}: FC{request.function_code} read of "
                f"{request.count} at {request.address}: no answer within {short_s:g} s "
                "(silent, and others wait)"
            ) from None

    async def __call__(self, request: ReadRequest) -> list[int]:
        """`once`, retried within the job's budget as `emm.retry.DEVICE_READ` says; a silent
        device whose gateway others wait for gets no second try."""
        return await retry.DEVICE_READ.call(
            partial(self.once, request),
            attempts=self.attempts,
            until=self.started + self.budget_s,
            stop=lambda _state: self._short(),
        )


class _Values:
    """What a job's reads gathered: values, registers not available, registers not read (with
    why) and the first error, which names the reading's status."""

    def __init__(self) -> None:
        self.fields: dict[str, float] = {}
        self.text: dict[str, str] = {}
        self.missing: list[str] = []
        self.errors: dict[str, str] = {}
        self.first_error: DeviceError | DecodeError | None = None

    def take(self, decoder: RequestDecoder, words: list[int]) -> None:
        values, miss = decoder.decode(words)
        self.fields.update(values)
        self.missing.extend(miss)
        if decoder.has_text:
            text, miss = decoder.decode_text(words)
            self.text.update(text)
            self.missing.extend(miss)

    def fail(self, error: DeviceError | DecodeError) -> None:
        self.first_error = self.first_error or error


async def read_job(job: Job, device: Device, *, attempts: int) -> Reading | None:
    """Read every planned request of `job`; failures end up in the reading, not as exceptions.

    None when the job got a connection to its gateway more than half a tick after its tick: it
    is dropped as late, like a job that reached the worker that late. A device that cannot be
    reached stops the remaining requests of this job (they would fail the same way); a request
    answered with a Modbus exception loses only its own registers.
    """
    started = time.monotonic()
    budget_s = max(0.05, (job.deadline_ms / 1000 - time.time()) - PUBLISH_MARGIN_S)
    values = _Values()
    decoders = job.plan.decoders
    device.gateway.configure(job.gateway)
    async with device.gateway.acquire() as link:
        if now_ms() - job.tick_ms > job.period_ms / 2:
            return None
        requests = _Requests(device, link, attempts, started, budget_s)
        device.load.begin(job)
        held = time.monotonic()
        try:
            await _read_all(job.meter, device, decoders, requests, values)
        finally:
            device.load.end(job, requests.sent, time.monotonic() - held)
    return Reading(
        meter=job.meter,
        tick_ms=job.tick_ms,
        fields=values.fields,
        status=_status(values, requests, started),
        missing=tuple(values.missing),
        errors=values.errors,
        counters=job.plan.counters,
        text=values.text,
        guard=job.guard,
    )


async def _read_all(
    meter: Meter,
    device: Device,
    decoders: tuple[RequestDecoder, ...],
    read: _Requests,
    values: _Values,
) -> None:
    """Read the planned requests one after the other into `values`."""
    for index, decoder in enumerate(decoders):
        if not decoder.registers:
            continue  # a planned request no register needs: nothing to read
        try:
            await _read_planned(meter, device, decoder, read, values)
        except TransientDeviceError as exc:
            values.fail(exc)
            for rest in decoders[index:]:
                for reg in rest.registers:
                    if reg.name not in values.fields and reg.name not in values.text:
                        values.errors[reg.name] = str(exc)
            break
        except (DeviceError, DecodeError) as exc:
            values.fail(exc)
            for reg in decoder.registers:
                values.errors[reg.name] = str(exc)


async def _read_planned(
    meter: Meter, device: Device, decoder: RequestDecoder, read: _Requests, values: _Values
) -> None:
    """Read one planned request: as the device's learned split if it has one, else as planned,
    splitting it (and learning the split) if it crosses a hole."""
    fc = decoder.registers[0].function_code
    split = device.holes.get(decoder)
    if split is not None:
        for part in split.parts:
            values.take(part, await read(request_for(part, fc)))
        values.errors.update(split.unreadable)
        if split.unreadable:
            values.fail(
                PermanentDeviceError(
                    next(iter(split.unreadable.values())), exception_code=ILLEGAL_DATA_ADDRESS
                )
            )
        return
    try:
        values.take(decoder, await read(request_for(decoder, fc)))
    except PermanentDeviceError as exc:
        if exc.exception_code != ILLEGAL_DATA_ADDRESS or len(decoder.registers) < 2:
            raise
        await _split(meter, device, decoder, read, values, exc)


async def _split(
    meter: Meter,
    device: Device,
    decoder: RequestDecoder,
    read: _Requests,
    values: _Values,
    refused: PermanentDeviceError,
) -> None:
    """Split the planned request `decoder`, just `refused` with exception 2, into parts that
    read; the device remembers the split, and the registers it never reads are logged once."""
    fc = decoder.registers[0].function_code
    parts, unreadable = await split_halves(
        read, fc, decoder.registers, deadline=read.started + read.budget_s
    )
    device.holes.learn(decoder, [p for p, _words in parts], unreadable)
    log.warning(
        "meter %d (%s:%d unit %d): FC%d read of %d at %d crosses a hole; "
        "split into %d request(s)%s",
        meter.id,
        quote(meter.host),
        meter.port,
        meter.unit_id,
        fc,
        decoder.count,
        decoder.start,
        len(parts),
        f"; never readable: {', '.join(sorted(unreadable))}" if unreadable else "",
    )
    for part, words in parts:
        values.take(part, words)
    values.errors.update(unreadable)
    if unreadable:
        values.fail(refused)


def _status(values: _Values, requests: _Requests, started: float) -> Status:
    """The reading's status: up when the device answered anything, named by the first error."""
    latency_ms = (time.monotonic() - started) * 1000
    first_error = values.first_error
    if first_error is None:
        return Status(up=True, latency_ms=round(latency_ms, 3), requests=requests.sent)
    code = first_error.code if isinstance(first_error, DeviceError) else "decode_error"
    return Status(
        up=requests.answered > 0,
        error_code=code,
        error=str(first_error),
        latency_ms=round(latency_ms, 3),
        requests=requests.sent,
    )
