"""The worker's line about a device's failed reads: when the problem starts, changes and ends,
registers named only when some but not all failed."""

from __future__ import annotations

import logging

import pytest

from emm.messages import Job, Meter, Reading, Status
from emm.plan import Plan
from emm.registers import DataType, Register
from worker.consumer import report
from worker.device import Devices
from worker.health import OfflinePolicy
from worker.modbus import DevicePool

pytestmark = pytest.mark.timeout(10)

NAMES = ("voltageL1", "voltageL2", "voltageL3")
PLAN = Plan.build(Register(name, 2 * i, 4, DataType.FLOAT32) for i, name in enumerate(NAMES))
METER = Meter(7, "10.0.0.5", 502, 1, "sdm630")
T0 = 1_772_366_400_000  # 2026-03-01T12:00:00Z
PERIOD = 10_000
WHERE = "meter 7 (sdm630 at 10.0.0.5:502 unit 1)"


def _reading(tick_ms: int, failed: tuple[str, ...], code: str = "timeout") -> Reading:
    fields = {name: 230.0 for name in NAMES if name not in failed}
    error = f"10.0.0.5:502 unit 1: FC4 read: {code}" if failed else ""
    status = Status(up=bool(fields), error_code=code if failed else "", error=error)
    return Reading(METER, tick_ms, fields, status, errors=dict.fromkeys(failed, error))


def _lines(caplog: pytest.LogCaptureFixture, ticks: list[tuple[tuple[str, ...], str]]) -> list[str]:
    device = Devices(
        DevicePool(timeout_s=1, connect_timeout_s=1, idle_close_s=60), OfflinePolicy(3, 60)
    ).get(METER)
    with caplog.at_level(logging.DEBUG, logger="worker.consumer"):
        for n, (failed, code) in enumerate(ticks):
            tick_ms = T0 + n * PERIOD
            job = Job(METER, tick_ms, tick_ms + PERIOD, PLAN)
            report(job, _reading(tick_ms, failed, code), device)
    return [f"{r.levelname} {r.getMessage()}" for r in caplog.records]


def test_a_problem_is_logged_when_it_starts_changes_and_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    all_failed = (NAMES, "timeout")
    some_failed = (("voltageL2", "voltageL3"), "modbus_exception_2")
    lines = _lines(caplog, [all_failed] * 4 + [some_failed] * 3 + [((), "")] * 2)
    assert lines == [
        f"WARNING {WHERE} tick 2026-03-01T12:00:00+00:00: 10.0.0.5:502 unit 1: FC4 read: "
        "timeout; none of its 3 registers read",
        f"WARNING {WHERE} tick 2026-03-01T12:00:40+00:00: now (after 4 tick(s) of timeout) "
        "10.0.0.5:502 unit 1: FC4 read: modbus_exception_2; 2 of 3 registers not read: "
        "voltageL2, voltageL3",
        f"INFO {WHERE}: read fully again at tick 2026-03-01T12:01:10+00:00, after 3 tick(s) with "
        "modbus_exception_2",
    ]


def test_other_registers_failing_is_a_change(caplog: pytest.LogCaptureFixture) -> None:
    lines = _lines(caplog, [(("voltageL1",), "timeout"), (("voltageL2",), "timeout")])
    assert [line.rsplit("; ", 1)[1] for line in lines] == [
        "1 of 3 registers not read: voltageL1",
        "1 of 3 registers not read: voltageL2",
    ]


def test_a_device_that_reads_fully_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    assert _lines(caplog, [((), "")] * 3) == []
