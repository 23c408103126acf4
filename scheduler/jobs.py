"""Turning one tick's due meters into jobs (pure): each job carries the plan of the registers
due at that tick, built once per type and set of due poll classes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from emm.config import MeterConfig
from emm.messages import Job
from emm.plan import Plan
from emm.planner import ReadLimits, due_classes
from emm.registers import Register


@dataclass(frozen=True, slots=True)
class MeterTick:
    """One meter's part in a tick: its meter, its job's deadline (the meter's own next tick),
    the tick's index in the meter's schedule and whether its daily registers are due."""

    config: MeterConfig
    deadline_ms: int
    index: int
    daily: bool


class TypePlans:
    """The plans of one type's registers: one per set of due poll classes, built when first
    needed (a type has a handful of such sets at most)."""

    def __init__(self, registers: tuple[Register, ...], limits: ReadLimits) -> None:
        self.registers = registers
        self.limits = limits
        self.classes = frozenset(r.poll_every for r in registers)
        self._plans: dict[frozenset[int], Plan | None] = {}
        # most types read everything on every tick: one plan, nothing to work out per meter
        self._always = self.plan(self.classes) if self.classes == {1} else None

    def for_tick(self, tick: MeterTick) -> Plan | None:
        """The plan of the registers due at a meter's tick; None when none of them is due."""
        if self._always is not None:
            return self._always
        return self.plan(due_classes(self.classes, tick.config.meter.id, tick.index, tick.daily))

    def plan(self, due: frozenset[int]) -> Plan | None:
        """The plan of the registers of the `due` classes; None when none of them is due."""
        if due not in self._plans:
            registers = [r for r in self.registers if r.poll_every in due]
            self._plans[due] = Plan.build(registers, self.limits) if registers else None
        return self._plans[due]


class PlanBook:
    """The plans of the configuration in use, kept from tick to tick for as long as a type's
    registers and limits stay the same (the configuration itself is loaded anew every tick)."""

    def __init__(self) -> None:
        self._types: dict[tuple[tuple[Register, ...], ReadLimits], TypePlans] = {}

    def types(self, meters: Iterable[MeterConfig]) -> dict[tuple[int, ReadLimits], TypePlans]:
        """The plans of the types of `meters`, by `_type_key`; the types no meter has any
        more are forgotten."""
        by_key: dict[tuple[int, ReadLimits], TypePlans] = {}
        kept: dict[tuple[tuple[Register, ...], ReadLimits], TypePlans] = {}
        for mc in meters:
            type_key = _type_key(mc)
            if type_key in by_key:
                continue
            # compared by value once per type and tick: a reload gives equal, new tuples
            key = (mc.registers, mc.limits)
            plans = kept.get(key) or self._types.get(key) or TypePlans(*key)
            by_key[type_key] = kept[key] = plans
        self._types = kept
        return by_key


def _type_key(mc: MeterConfig) -> tuple[int, ReadLimits]:
    # the meters of a type share one registers tuple (`emm.config.build_config`)
    return id(mc.registers), mc.limits


def build_jobs(
    meters: Iterable[MeterConfig], due: Sequence[MeterTick], tick_ms: int, book: PlanBook
) -> list[Job]:
    """One job for each meter of `due` (a subset of the configured `meters`) at `tick_ms`,
    with the plan of its registers due at this tick; a meter with no register due gets none.

    Jobs are ordered round-robin over the devices (host:port): meters behind one gateway are
    read one after the other, so a worker's share of the queue should hold many gateways at
    once rather than one gateway's meters in a row.
    """
    types = book.types(meters)
    by_link: dict[tuple[str, int], list[Job]] = {}
    for mt in due:
        plan = types[_type_key(mt.config)].for_tick(mt)
        if plan is None:
            continue
        meter = mt.config.meter
        by_link.setdefault((meter.host, meter.port), []).append(
            Job(
                meter=meter,
                tick_ms=tick_ms,
                deadline_ms=mt.deadline_ms,
                plan=plan,
                gateway=mt.config.gateway,
                plausibility=mt.config.plausibility,
            )
        )
    queues = list(by_link.values())
    return [
        queue[i]
        for i in range(max((len(q) for q in queues), default=0))
        for queue in queues
        if i < len(queue)
    ]
