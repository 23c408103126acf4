"""scheduler.ticks and scheduler.jobs: the union of crons, the meters due at a tick, their
deadlines and poll classes, and the plans built once per type and due set."""

from __future__ import annotations

from dataclasses import replace

import pytest

from emm.config import LoadedConfig, MeterConfig
from emm.messages import Job, Meter
from emm.plan import Plan
from emm.planner import DAY_MS, ReadLimits, daily_moment_ms
from emm.registers import DataType, Register
from emm.schedule import CronSchedule
from scheduler.ticks import Ticks

pytestmark = pytest.mark.timeout(30)

T0 = 1_700_000_040_000  # 2023-11-14 22:14:00 UTC, on a minute
POWER = Register("power", 0, 4, DataType.FLOAT32, unit="W")
ENERGY = Register("energy", 200, 4, DataType.FLOAT32, unit="kWh", poll_every=3)
SERIAL = Register("serial", 0xFC00, 3, DataType.UINT32, poll_every=0)
REGISTERS = (POWER, ENERGY, SERIAL)


def meters(*crons: str | None, registers: tuple[Register, ...] = REGISTERS) -> LoadedConfig:
    """Meters 1..N behind one gateway, one per cron given (None: the default cron)."""
    return LoadedConfig(
        meters=[
            MeterConfig(
                Meter(i, "10.0.0.1", 502, i, "sdm"),
                registers,
                ReadLimits(),
                read_cron=None if cron is None else CronSchedule(cron),
            )
            for i, cron in enumerate(crons, start=1)
        ]
    )


def names(job: Job) -> set[str]:
    return {r.name for r in job.plan.registers}


def test_the_clock_ticks_on_the_union_of_the_crons() -> None:
    ticks = Ticks(CronSchedule("*/2 * * * * *"))
    assert ticks.next_after(T0) == T0 + 2_000
    ticks.update(meters(None, "*/3 * * * * *", "*/3 * * * * *"))
    got = []
    t = T0
    for _ in range(6):
        t = ticks.next_after(t)
        got.append(t - T0)
    assert got == [2_000, 3_000, 4_000, 6_000, 8_000, 9_000]


def test_a_meter_with_its_own_cron_is_read_on_its_own_ticks_only() -> None:
    config = meters(None, "*/3 * * * * *", registers=(POWER,))
    ticks = Ticks(CronSchedule("*/2 * * * * *"))
    read: dict[int, list[tuple[int, int]]] = {1: [], 2: []}
    for offset in range(0, 13_000, 1_000):
        tick = ticks.jobs(config, T0 + offset)
        for job in tick.jobs:
            read[job.meter.id].append((job.tick_ms - T0, job.deadline_ms - T0))
        periods = [job.deadline_ms - job.tick_ms for job in tick.jobs]
        assert tick.give_up_ms == T0 + offset + min(periods, default=0) // 2
    assert read[1] == [(t, t + 2_000) for t in range(0, 13_000, 2_000)]
    assert read[2] == [(t, t + 3_000) for t in range(0, 13_000, 3_000)]


def test_slow_registers_are_read_every_nth_tick_with_fewer_requests_between() -> None:
    ticks = Ticks(CronSchedule("* * * * * *"))
    config = meters(None, None, None)
    seen: dict[int, list[tuple[int, set[str], int]]] = {1: [], 2: [], 3: []}
    for k in range(7):
        for job in ticks.jobs(config, T0 + k * 1_000).jobs:
            seen[job.meter.id].append((k, names(job), len(job.plan.requests)))
    index0 = T0 // 1_000
    for meter_id, rows in seen.items():
        assert [k for k, _, _ in rows] == list(range(7))
        for k, read, requests in rows:
            energy = (index0 + k + meter_id) % 3 == 0
            assert read == {"power"} | ({"energy"} if energy else set()) | (
                {"serial"} if k == 0 else set()
            )
            # each block is its own request: the count drops with what is not due
            assert requests == len(read)
    # meters take turns: on each tick one of the three reads its energy counters
    for k in range(7):
        assert (
            sum("energy" in read for rows in seen.values() for kk, read, _ in rows if kk == k) == 1
        )


def test_the_daily_class_is_read_first_then_after_the_meters_moment() -> None:
    ticks = Ticks(CronSchedule("*/15 * * * *"))
    config = meters(None, registers=(POWER, SERIAL))
    period = 900_000
    moment = daily_moment_ms(1)
    start = (T0 // DAY_MS) * DAY_MS  # midnight
    serial_at = [
        t - start
        for t in range(start, start + 2 * DAY_MS, period)
        if "serial" in names(ticks.jobs(config, t).jobs[0])
    ]
    first_after = (moment + period - 1) // period * period  # the first tick at or after it
    assert 0 < first_after < DAY_MS
    assert serial_at == [0, first_after, first_after + DAY_MS]


def test_plans_are_built_once_per_due_set_across_reloads(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[frozenset[str]] = []
    real = Plan.build

    def counting(registers: list[Register], limits: ReadLimits | None = None) -> Plan:
        built.append(frozenset(r.name for r in registers))
        return real(registers, limits)

    monkeypatch.setattr(Plan, "build", counting)
    ticks = Ticks(CronSchedule("* * * * * *"))
    ids: set[str] = set()
    for k in range(9):
        # a fresh load every tick: equal registers, new objects
        config = meters(None, None, registers=tuple(replace(r) for r in REGISTERS))
        ids |= {job.plan.plan_id for job in ticks.jobs(config, T0 + k * 1_000).jobs}
    # first tick: power+serial+energy for one meter or the other; then power, power+energy
    assert len(built) == len(set(built)) == len(ids)
    assert {"power"} in built and {"power", "energy"} in built
    # a changed register map is planned anew
    changed = (replace(POWER, address=2), ENERGY, SERIAL)
    ticks.jobs(meters(None, None, registers=changed), T0 + 9_000)
    assert len(built) > len(ids)


def test_a_tick_with_nothing_due_publishes_no_job_for_the_meter() -> None:
    ticks = Ticks(CronSchedule("* * * * * *"))
    config = meters(None, registers=(ENERGY,))
    counts = [len(ticks.jobs(config, T0 + k * 1_000).jobs) for k in range(6)]
    assert counts.count(1) == 2 and counts.count(0) == 4


def test_a_meter_added_later_reads_its_daily_class_on_its_first_tick() -> None:
    ticks = Ticks(CronSchedule("* * * * * *"))
    one = meters(None)
    two = meters(None, None)
    assert "serial" in names(ticks.jobs(one, T0).jobs[0])
    first, second = ticks.jobs(two, T0 + 1_000).jobs
    assert "serial" not in names(first) and "serial" in names(second)
