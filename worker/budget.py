"""The gateways' budget, measured: each tick's load of each gateway a worker reads, reported as
a `GatewayStatus` (stored in `gateway_status`) once the tick is over, and a warning for a
gateway that is nearly full.

A gateway's tick is over a moment after its deadline (the next tick; jobs expire then), once no
job of it is still reading; it is reported once, and what comes for it after that is left out
(a second point at the same time would overwrite the first).
Busy time is the time its jobs held a connection to it, pauses included; the utilisation is
that share of the period (of `max_connections` periods, for a gateway that allows several).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from broker import READINGS, Broker
from emm import retry
from emm.budget import WARN_ABOVE, meters_that_fit
from emm.errors import BrokerError
from emm.messages import GatewayStatus, Job
from worker.ticks import iso, now_ms

log = logging.getLogger(__name__)

REPORT_EVERY_S = 0.25  # how often finished ticks are looked for
# a tick is reported this long after its deadline: a job delivered just before it expired may
# still be on its way to being counted as late
REPORT_AFTER_MS = 500
# a gateway busier than emm.budget.WARN_ABOVE of its period is warned about once an hour
WARN_EVERY_S = 3600.0
# A tick still reading this long after its deadline is reported anyway (a read hung past
# every timeout would otherwise keep its tick forever).
STUCK_AFTER_MS = 120_000
PUBLISH_WITHIN_S = 5.0  # a status RabbitMQ does not take in this time is dropped
MAX_NAMED_METERS = 20  # meter ids a warning lists


@dataclass
class TickLoad:
    """One gateway's load at one tick, while its jobs run."""

    deadline_ms: int
    connections: int
    meters: set[int] = field(default_factory=set)
    requests: int = 0
    busy_s: float = 0.0
    late: int = 0
    reading: int = 0  # jobs still reading


class GatewayLoad:
    """One gateway's load per tick, kept until the tick is reported."""

    __slots__ = ("_reported_ms", "_ticks", "host", "port")

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._ticks: dict[int, TickLoad] = {}
        self._reported_ms = 0  # the newest tick reported

    def _tick(self, job: Job) -> TickLoad | None:
        """The load of `job`'s tick; None once that tick was reported."""
        load = self._ticks.get(job.tick_ms)
        if load is None:
            if job.tick_ms <= self._reported_ms:
                return None
            load = self._ticks[job.tick_ms] = TickLoad(job.deadline_ms, job.gateway.max_connections)
        return load

    def begin(self, job: Job) -> None:
        """`job` got a connection and reads now."""
        load = self._tick(job)
        if load is not None:
            load.meters.add(job.meter.id)
            load.reading += 1

    def end(self, job: Job, requests: int, busy_s: float) -> None:
        """`job`, begun, sent `requests` over a connection it held for `busy_s`."""
        load = self._tick(job)
        if load is not None:
            load.requests += requests
            load.busy_s += busy_s
            load.reading -= 1

    def late(self, job: Job) -> None:
        """`job` was dropped as late (it came, or got the gateway, past half its tick)."""
        load = self._tick(job)
        if load is not None:
            load.late += 1

    def due(self, now: int) -> list[tuple[GatewayStatus, set[int]]]:
        """The statuses of the ticks over at `now` (epoch ms), each with its meter ids; those
        ticks are forgotten."""
        done = [
            tick_ms
            for tick_ms, load in self._ticks.items()
            if load.deadline_ms + REPORT_AFTER_MS <= now
            and (load.reading == 0 or load.deadline_ms + STUCK_AFTER_MS <= now)
        ]
        out = []
        for tick_ms in sorted(done):
            load = self._ticks.pop(tick_ms)
            self._reported_ms = max(self._reported_ms, tick_ms)
            status = GatewayStatus(
                host=self.host,
                port=self.port,
                tick_ms=tick_ms,
                period_ms=load.deadline_ms - tick_ms,
                connections=load.connections,
                meters=len(load.meters),
                requests=load.requests,
                busy_ms=round(load.busy_s * 1000, 3),
                late=load.late,
            )
            out.append((status, load.meters))
        return out


def overload_warning(status: GatewayStatus, meter_ids: set[int]) -> str | None:
    """The warning for a gateway over WARN_ABOVE at a tick (None when it is not): it names the
    gateway, its meters, and what would fit.

    Over means busy over WARN_ABOVE of the period, or so busy that meters were dropped as late
    and, counted at the cost of those read, all of them would need more than WARN_ABOVE: a
    saturated gateway whose late jobs are dropped at half a tick is busy only about half of it.
    """
    utilisation = status.utilisation
    per_meter_ms = status.busy_ms / status.meters if status.meters else 0.0
    demand = utilisation + status.late * per_meter_ms / (status.period_ms * status.connections)
    if max(utilisation, demand) <= WARN_ABOVE:
        return None
    ids = sorted(meter_ids)
    named = ", ".join(map(str, ids[:MAX_NAMED_METERS])) + (
        " ..." if len(ids) > MAX_NAMED_METERS else ""
    )
    read = f"reading {status.meters} meter(s) ({named})" if ids else "reading no meter"
    late = ""
    if status.late:
        late = f", {status.late} more dropped as late"
        if per_meter_ms > 0:
            late += f" (all of them would need about {demand:.0%})"
    if per_meter_ms > 0:
        fits = meters_that_fit(per_meter_ms, status.period_ms, status.connections)
        period_s = (status.busy_ms + status.late * per_meter_ms) / (
            WARN_ABOVE * status.connections * 1000
        )
        fit = (
            f"; about {fits} such meter(s) fit in {WARN_ABOVE:.0%} of the period, or a period "
            f"of {math.ceil(period_s)} s would fit all {status.meters + status.late}"
        )
    else:
        fit = ""
    return (
        f"gateway {status.name} busy {utilisation:.0%} of tick {iso(status.tick_ms)} "
        f"({status.busy_ms:.0f} ms of {status.period_ms} ms over {status.connections} "
        f"connection(s)) {read}{late}{fit}"
    )


class Budget:
    """The gateways' loads of one worker process: reports each gateway's finished ticks to
    `emm.readings` and warns, once an hour per gateway, about one over WARN_ABOVE."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._gateways: dict[tuple[str, int], GatewayLoad] = {}
        self._warned: dict[str, float] = {}  # gateway -> when it was last warned about
        self.reported = 0  # statuses RabbitMQ confirmed

    def gateway(self, host: str, port: int) -> GatewayLoad:
        """The load of `host`:`port`, made on first use."""
        key = (host, port)
        load = self._gateways.get(key)
        if load is None:
            load = self._gateways[key] = GatewayLoad(host, port)
        return load

    def due(self, now: int) -> list[GatewayStatus]:
        """The statuses of every gateway's ticks over at `now`, logging the warnings due."""
        out = []
        for load in self._gateways.values():
            for status, meter_ids in load.due(now):
                self._warn(status, meter_ids)
                out.append(status)
        return out

    def _warn(self, status: GatewayStatus, meter_ids: set[int]) -> None:
        last = self._warned.get(status.name)
        if last is not None and self.clock() - last < WARN_EVERY_S:
            return
        warning = overload_warning(status, meter_ids)
        if warning is not None:
            self._warned[status.name] = self.clock()
            log.warning("%s", warning)

    async def run(self, stop: asyncio.Event, broker: Broker) -> None:
        """Until `stop` is set, publish the status of each gateway's finished ticks.

        A status RabbitMQ does not take within PUBLISH_WITHIN_S is dropped: it is a measure,
        not a reading, and a worker that waited for it would fall behind on the next ticks.
        """
        while not stop.is_set():
            statuses = self.due(now_ms())
            if statuses:
                # all at once: each waits for its confirm, as many gateways as the worker reads
                await asyncio.gather(*(self._publish(broker, status) for status in statuses))
            try:
                await asyncio.wait_for(stop.wait(), REPORT_EVERY_S)
            except TimeoutError:
                pass

    async def _publish(self, broker: Broker, status: GatewayStatus) -> None:
        message_id = f"{status.name}@{status.tick_ms}"
        try:
            await retry.OUTBOX_PUBLISH.call(
                partial(
                    broker.publish,
                    READINGS,
                    status.encode(),
                    exchange=READINGS,
                    message_id=message_id,
                ),
                until=time.monotonic() + PUBLISH_WITHIN_S,
            )
            self.reported += 1
        except BrokerError as exc:
            log.debug("gateway status %s dropped: %s", message_id, exc)
