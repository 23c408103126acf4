"""Turning the loaded configuration into the jobs of one tick (pure)."""

from __future__ import annotations

from emm.config import LoadedConfig
from emm.messages import Job
from emm.plan import Plan
from emm.planner import ReadLimits


def build_jobs(config: LoadedConfig, tick_ms: int, period_ms: int) -> list[Job]:
    """One job per meter for the tick at `tick_ms`, valid until the next tick.

    Meters of a type share one `Plan`, built here once per type and read limit (the
    configuration is loaded anew for every tick; a gateway's `max_read_registers` lowers its
    meters' limit); each job carries its gateway's settings. Jobs are ordered round-robin over
    the devices (host:port): meters behind one gateway are read one after the other, so a
    worker's share of the queue should hold many gateways at once rather than one gateway's
    meters in a row.
    """
    by_link: dict[tuple[str, int], list[Job]] = {}
    # meters of a type share one registers tuple (`emm.config.build_config`) and its limits
    plans: dict[tuple[int, ReadLimits], Plan] = {}
    for mc in config.meters:
        key = (id(mc.registers), mc.limits)
        plan = plans.get(key)
        if plan is None:
            plan = plans[key] = Plan.build(mc.registers, mc.limits)
        by_link.setdefault((mc.meter.host, mc.meter.port), []).append(
            Job(
                meter=mc.meter,
                tick_ms=tick_ms,
                deadline_ms=tick_ms + period_ms,
                plan=plan,
                gateway=mc.gateway,
            )
        )
    queues = list(by_link.values())
    return [
        queue[i]
        for i in range(max((len(q) for q in queues), default=0))
        for queue in queues
        if i < len(queue)
    ]
