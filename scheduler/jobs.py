"""Turning the loaded configuration into the jobs of one tick (pure)."""

from __future__ import annotations

from functools import lru_cache

from emm.config import LoadedConfig
from emm.messages import Job
from emm.planner import ReadLimits, ReadRequest, plan
from emm.registers import Register


@lru_cache(maxsize=1024)
def plan_for(registers: tuple[Register, ...], limits: ReadLimits) -> tuple[ReadRequest, ...]:
    """The read plan of a register map; meters of one type share it, so it is cached."""
    return tuple(plan(registers, limits))


def build_jobs(config: LoadedConfig, tick_ms: int, period_ms: int) -> list[Job]:
    """One job per meter for the tick at `tick_ms`, valid until the next tick.

    Jobs are ordered round-robin over the devices (host:port): meters behind one gateway are
    read one after the other, so a worker's share of the queue should hold many gateways at
    once rather than one gateway's meters in a row.
    """
    by_link: dict[tuple[str, int], list[Job]] = {}
    # meters of a type share one registers tuple: look its plan up once, not once per meter
    plans: dict[tuple[int, ReadLimits], tuple[ReadRequest, ...]] = {}
    for mc in config.meters:
        key = (id(mc.registers), mc.limits)
        requests = plans.get(key)
        if requests is None:
            requests = plans[key] = plan_for(mc.registers, mc.limits)
        by_link.setdefault((mc.meter.host, mc.meter.port), []).append(
            Job(
                meter=mc.meter,
                tick_ms=tick_ms,
                deadline_ms=tick_ms + period_ms,
                requests=requests,
                registers=mc.registers,
            )
        )
    queues = list(by_link.values())
    return [
        queue[i]
        for i in range(max((len(q) for q in queues), default=0))
        for queue in queues
        if i < len(queue)
    ]
