"""Reading one job: planned requests over the device's link, retried within the tick, decoded."""

from __future__ import annotations

import logging
import time
from functools import lru_cache

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from emm.codec import RequestDecoder
from emm.errors import DecodeError, DeviceError, TransientDeviceError
from emm.messages import Job, Reading, Status
from emm.planner import ReadRequest, assign
from emm.registers import Register
from worker.modbus import DevicePool

log = logging.getLogger(__name__)

# Leave this much of the tick for publishing the reading after the last read attempt.
PUBLISH_MARGIN_S = 0.2


@lru_cache(maxsize=4096)
def _decoders(
    requests: tuple[ReadRequest, ...], registers: tuple[Register, ...]
) -> tuple[tuple[ReadRequest, RequestDecoder], ...]:
    return tuple(
        (request, RequestDecoder.build(request.address, request.count, covered))
        for request, covered in assign(requests, registers)
    )


async def read_job(job: Job, pool: DevicePool, *, attempts: int) -> Reading:
    """Read every planned request of `job`; failures end up in the reading, not as exceptions.

    A device that cannot be reached stops the remaining requests of this job (they would fail
    the same way); a request answered with a Modbus exception loses only its own registers.
    """
    started = time.monotonic()
    meter = job.meter
    budget_s = max(0.05, (job.deadline_ms / 1000 - time.time()) - PUBLISH_MARGIN_S)
    fields: dict[str, float] = {}
    missing: list[str] = []
    errors: dict[str, str] = {}
    first_error: DeviceError | DecodeError | None = None
    sent = 0
    answered = 0
    try:
        decoders = _decoders(job.requests, job.registers)
    except DecodeError as exc:
        decoders = ()
        first_error = exc
        for reg in job.registers:
            errors[reg.name] = str(exc)
    link = pool.link(meter.host, meter.port)
    async with link.lock:
        for index, (request, decoder) in enumerate(decoders):
            left_s = budget_s - (time.monotonic() - started)
            try:
                async for attempt in AsyncRetrying(
                    stop=stop_after_attempt(attempts) | stop_after_delay(max(left_s, 0.0)),
                    wait=wait_exponential(multiplier=0.05, max=1.0),
                    retry=retry_if_exception_type(TransientDeviceError),
                    reraise=True,
                ):
                    with attempt:
                        sent += 1
                        words = await link.read(
                            request.function_code, request.address, request.count, meter.unit_id
                        )
                answered += 1
                values, miss = decoder.decode(words)
                fields.update(values)
                missing.extend(miss)
            except TransientDeviceError as exc:
                first_error = first_error or exc
                for _req, rest in decoders[index:]:
                    for reg in rest.registers:
                        errors[reg.name] = str(exc)
                break
            except (DeviceError, DecodeError) as exc:
                first_error = first_error or exc
                for reg in decoder.registers:
                    errors[reg.name] = str(exc)
    latency_ms = (time.monotonic() - started) * 1000
    if first_error is None:
        status = Status(up=True, latency_ms=round(latency_ms, 3), requests=sent)
    else:
        code = first_error.code if isinstance(first_error, DeviceError) else "decode_error"
        status = Status(
            up=answered > 0,
            error_code=code,
            error=str(first_error),
            latency_ms=round(latency_ms, 3),
            requests=sent,
        )
    return Reading(
        meter=meter,
        tick_ms=job.tick_ms,
        fields=fields,
        status=status,
        missing=tuple(missing),
        errors=errors,
    )
