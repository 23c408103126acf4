"""Reading one job: planned requests over the device's link, retried within the tick, decoded.

Holes: when a merged request is answered with exception 2 (ILLEGAL DATA ADDRESS), the registers it
covers are bisected until every part either reads or is a single register the device refuses.
The parts that read are remembered per device and request (`HoleMemory`), so later ticks go
straight to them instead of retrying the failing span; the refused registers are logged once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

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
from emm.planner import ReadRequest
from emm.registers import Register
from worker.modbus import DevicePool

log = logging.getLogger(__name__)

# Leave this much of the tick for publishing the reading after the last read attempt.
PUBLISH_MARGIN_S = 0.2
ILLEGAL_DATA_ADDRESS = 2
# A learned split is tried as planned again after this long (firmware updates, replaced devices).
HOLE_MEMORY_TTL_S = 3600.0

Reader = Callable[[ReadRequest], Awaitable[list[int]]]


def _request_for(decoder: RequestDecoder, function_code: int) -> ReadRequest:
    return ReadRequest(function_code, decoder.start, decoder.count)


def _decoder_for(registers: tuple[Register, ...]) -> RequestDecoder:
    start = min(r.address for r in registers)
    end = max(r.end for r in registers)
    return RequestDecoder.build(start, end - start, registers)


@dataclass(frozen=True)
class Split:
    """What a failing merged request was split into: parts that read, registers that never do."""

    parts: tuple[RequestDecoder, ...]
    unreadable: dict[str, str]
    expires_at: float


class HoleMemory:
    """Per worker process: learned splits, keyed by device, unit and planned request."""

    def __init__(self, ttl_s: float = HOLE_MEMORY_TTL_S) -> None:
        self.ttl_s = ttl_s
        # device (host, port, unit id) -> planned request's decoder -> what it was split into
        self._splits: dict[tuple[str, int, int], dict[RequestDecoder, Split]] = {}

    def get(self, meter: Meter, decoder: RequestDecoder) -> Split | None:
        device = self._splits.get((meter.host, meter.port, meter.unit_id))
        if device is None:
            return None
        split = device.get(decoder)
        if split is not None and split.expires_at < time.monotonic():
            del device[decoder]
            return None
        return split

    def unreadable(self, meter: Meter) -> set[str]:
        """Names of the meter's registers already known to be refused (reported once)."""
        device = self._splits.get((meter.host, meter.port, meter.unit_id), {})
        return {name for split in device.values() for name in split.unreadable}

    def learn(
        self,
        meter: Meter,
        decoder: RequestDecoder,
        parts: list[RequestDecoder],
        unreadable: dict[str, str],
    ) -> Split:
        split = Split(tuple(parts), dict(unreadable), time.monotonic() + self.ttl_s)
        self._splits.setdefault((meter.host, meter.port, meter.unit_id), {})[decoder] = split
        return split


async def split_read(
    read: Reader, function_code: int, registers: tuple[Register, ...]
) -> tuple[list[tuple[RequestDecoder, list[int]]], dict[str, str]]:
    """Bisect `registers` until each part reads or is one register refused with exception 2.

    Returns the parts that read (with their words) and {name: error} of the refused registers.
    Transient errors propagate: the device is gone, not the address.
    """
    decoder = _decoder_for(registers)
    try:
        words = await read(_request_for(decoder, function_code))
        return [(decoder, words)], {}
    except PermanentDeviceError as exc:
        if exc.exception_code != ILLEGAL_DATA_ADDRESS:
            raise
        if len(registers) == 1:
            return [], {registers[0].name: str(exc)}
    return await split_halves(read, function_code, registers)


async def split_halves(
    read: Reader, function_code: int, registers: tuple[Register, ...]
) -> tuple[list[tuple[RequestDecoder, list[int]]], dict[str, str]]:
    """`split_read` of each half of `registers`, whose read together just failed."""
    ordered = tuple(sorted(registers, key=lambda r: r.address))
    middle = len(ordered) // 2
    left_parts, left_bad = await split_read(read, function_code, ordered[:middle])
    right_parts, right_bad = await split_read(read, function_code, ordered[middle:])
    return left_parts + right_parts, {**left_bad, **right_bad}


async def read_job(
    job: Job, pool: DevicePool, *, attempts: int, holes: HoleMemory | None = None
) -> Reading:
    """Read every planned request of `job`; failures end up in the reading, not as exceptions.

    A device that cannot be reached stops the remaining requests of this job (they would fail
    the same way); a request answered with a Modbus exception loses only its own registers.
    """
    started = time.monotonic()
    meter = job.meter
    holes = holes if holes is not None else HoleMemory()
    budget_s = max(0.05, (job.deadline_ms / 1000 - time.time()) - PUBLISH_MARGIN_S)
    fields: dict[str, float] = {}
    missing: list[str] = []
    errors: dict[str, str] = {}
    first_error: DeviceError | DecodeError | None = None
    counts = {"sent": 0, "answered": 0}
    link = pool.link(meter.host, meter.port)

    async def once(request: ReadRequest) -> list[int]:
        counts["sent"] += 1
        try:
            words = await link.read(
                request.function_code, request.address, request.count, meter.unit_id
            )
        except DeviceError as exc:
            if exc.code.startswith("modbus_exception"):
                counts["answered"] += 1  # an exception answer: the device is up
            raise
        counts["answered"] += 1
        return words

    async def read(request: ReadRequest) -> list[int]:
        # The first attempt goes straight out; tenacity (whose setup costs more than the read
        # itself on a fast link) only takes over once it failed.
        try:
            return await once(request)
        except TransientDeviceError:
            if attempts <= 1:
                raise
        left_s = budget_s - (time.monotonic() - started)
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(attempts - 1) | stop_after_delay(max(left_s, 0.0)),
            wait=wait_exponential(multiplier=0.1, max=1.0),  # 0.05 s, doubling, from the first
            retry=retry_if_exception_type(TransientDeviceError),
            before=_first_wait,
            reraise=True,
        ):
            with attempt:
                return await once(request)
        raise AssertionError("unreachable: tenacity reraises the last error")

    def take(decoder: RequestDecoder, words: list[int]) -> None:
        values, miss = decoder.decode(words)
        fields.update(values)
        missing.extend(miss)

    decoders = job.plan.decoders
    async with link.lock:
        for index, decoder in enumerate(decoders):
            if not decoder.registers:
                continue  # a planned request no register needs: nothing to read
            fc = decoder.registers[0].function_code
            split = holes.get(meter, decoder)
            try:
                if split is not None:
                    for part in split.parts:
                        take(part, await read(_request_for(part, fc)))
                    errors.update(split.unreadable)
                    if split.unreadable:
                        first_error = first_error or PermanentDeviceError(
                            next(iter(split.unreadable.values())),
                            exception_code=ILLEGAL_DATA_ADDRESS,
                        )
                    continue
                try:
                    take(decoder, await read(_request_for(decoder, fc)))
                except PermanentDeviceError as exc:
                    if exc.exception_code != ILLEGAL_DATA_ADDRESS or len(decoder.registers) < 2:
                        raise
                    parts, unreadable = await split_halves(read, fc, decoder.registers)
                    holes.learn(meter, decoder, [p for p, _words in parts], unreadable)
                    log.warning(
                        "meter %d (%s:%d unit %d): FC%d read of %d at %d crosses a hole; "
                        "split into %d request(s)%s",
                        meter.id,
                        meter.host,
                        meter.port,
                        meter.unit_id,
                        fc,
                        decoder.count,
                        decoder.start,
                        len(parts),
                        f"; never readable: {', '.join(sorted(unreadable))}" if unreadable else "",
                    )
                    for part, words in parts:
                        take(part, words)
                    errors.update(unreadable)
                    if unreadable:
                        first_error = first_error or exc
            except TransientDeviceError as exc:
                first_error = first_error or exc
                for rest in decoders[index:]:
                    for reg in rest.registers:
                        if reg.name not in fields:
                            errors[reg.name] = str(exc)
                break
            except (DeviceError, DecodeError) as exc:
                first_error = first_error or exc
                for reg in decoder.registers:
                    errors[reg.name] = str(exc)
    latency_ms = (time.monotonic() - started) * 1000
    if first_error is None:
        status = Status(up=True, latency_ms=round(latency_ms, 3), requests=counts["sent"])
    else:
        code = first_error.code if isinstance(first_error, DeviceError) else "decode_error"
        status = Status(
            up=counts["answered"] > 0,
            error_code=code,
            error=str(first_error),
            latency_ms=round(latency_ms, 3),
            requests=counts["sent"],
        )
    return Reading(
        meter=meter,
        tick_ms=job.tick_ms,
        fields=fields,
        status=status,
        missing=tuple(missing),
        errors=errors,
        counters=job.plan.counters,
    )


async def _first_wait(state: RetryCallState) -> None:
    """Before tenacity's first attempt (the second in all): the wait it would have made after
    the first, had that one been its own."""
    if state.attempt_number == 1:
        await asyncio.sleep(wait_exponential(multiplier=0.05, max=1.0)(state))
