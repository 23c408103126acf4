"""Reading one job: planned requests over the device's link, retried within the tick, decoded.

The steps: each planned request is sent (retried while the tick leaves time, `_Requests`); one
that crosses a hole in the device's map is split (`worker.holes`) and the split is remembered by
the device; the words are decoded into the reading's values (`_Values`); and the outcome becomes
the reading's status (`_status`).
"""

from __future__ import annotations

import asyncio
import logging
import time

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from emm.codec import RequestDecoder
from emm.errors import DecodeError, DeviceError, PermanentDeviceError, TransientDeviceError
from emm.messages import Job, Meter, Reading, Status
from emm.modbus import ILLEGAL_DATA_ADDRESS
from emm.planner import ReadRequest
from emm.text import quote
from worker.device import Device
from worker.holes import request_for, split_halves

log = logging.getLogger(__name__)

# Leave this much of the tick for publishing the reading after the last read attempt.
PUBLISH_MARGIN_S = 0.2


class _Requests:
    """Sends a job's requests over its device's link, retrying transient failures while the
    tick leaves time; counts the requests sent and those the device answered."""

    def __init__(self, device: Device, attempts: int, started: float, budget_s: float) -> None:
        self.link = device.link
        self.unit_id = device.unit_id
        self.attempts = attempts
        self.started = started
        self.budget_s = budget_s
        self.sent = 0
        self.answered = 0

    async def once(self, request: ReadRequest) -> list[int]:
        self.sent += 1
        try:
            words = await self.link.read(
                request.function_code, request.address, request.count, self.unit_id
            )
        except DeviceError as exc:
            if exc.code.startswith("modbus_exception"):
                self.answered += 1  # an exception answer: the device is up
            raise
        self.answered += 1
        return words

    async def __call__(self, request: ReadRequest) -> list[int]:
        # The first attempt goes straight out; tenacity (whose setup costs more than the read
        # itself on a fast link) only takes over once it failed.
        try:
            return await self.once(request)
        except TransientDeviceError:
            if self.attempts <= 1:
                raise
        left_s = self.budget_s - (time.monotonic() - self.started)
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(self.attempts - 1) | stop_after_delay(max(left_s, 0.0)),
            wait=wait_exponential(multiplier=0.1, max=1.0),  # 0.05 s, doubling, from the first
            retry=retry_if_exception_type(TransientDeviceError),
            before=_first_wait,
            reraise=True,
        ):
            with attempt:
                return await self.once(request)
        raise AssertionError("unreachable: tenacity reraises the last error")


async def _first_wait(state: RetryCallState) -> None:
    """Before tenacity's first attempt (the second in all): the wait it would have made after
    the first, had that one been its own."""
    if state.attempt_number == 1:
        await asyncio.sleep(wait_exponential(multiplier=0.05, max=1.0)(state))


class _Values:
    """What a job's reads gathered: values, registers not available, registers not read (with
    why) and the first error, which names the reading's status."""

    def __init__(self) -> None:
        self.fields: dict[str, float] = {}
        self.missing: list[str] = []
        self.errors: dict[str, str] = {}
        self.first_error: DeviceError | DecodeError | None = None

    def take(self, decoder: RequestDecoder, words: list[int]) -> None:
        values, miss = decoder.decode(words)
        self.fields.update(values)
        self.missing.extend(miss)

    def fail(self, error: DeviceError | DecodeError) -> None:
        self.first_error = self.first_error or error


async def read_job(job: Job, device: Device, *, attempts: int) -> Reading:
    """Read every planned request of `job`; failures end up in the reading, not as exceptions.

    A device that cannot be reached stops the remaining requests of this job (they would fail
    the same way); a request answered with a Modbus exception loses only its own registers.
    """
    started = time.monotonic()
    budget_s = max(0.05, (job.deadline_ms / 1000 - time.time()) - PUBLISH_MARGIN_S)
    requests = _Requests(device, attempts, started, budget_s)
    values = _Values()
    decoders = job.plan.decoders
    async with device.link.lock:
        await _read_all(job.meter, device, decoders, requests, values)
    return Reading(
        meter=job.meter,
        tick_ms=job.tick_ms,
        fields=values.fields,
        status=_status(values, requests, started),
        missing=tuple(values.missing),
        errors=values.errors,
        counters=job.plan.counters,
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
                    if reg.name not in values.fields:
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
