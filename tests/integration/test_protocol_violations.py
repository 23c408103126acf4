"""A device that answers against the protocol is named as such, in one line, by the read
path a worker uses: the simulator garbles its answers as a scenario says."""

from __future__ import annotations

import asyncio
import logging

import pytest

from emm.errors import TransientDeviceError
from emm.settings import SimulatorSettings
from simulator.app import Simulator, SimulatorOptions
from simulator.faults import VIOLATIONS, Fault, Scenario
from worker.modbus import DeviceLink

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

WHAT = "unit 1: FC3 read of 1 at 0: protocol violation:"
NAMED = {
    "transaction_id": "transaction id 2 in the answer to transaction 1",
    "byte_count": "byte count 4 but 2 bytes follow",
    "function_code": "function code 4 in the answer to function code 3",
    "short_frame": "short frame: 9 bytes of the 11 its header announces",
}


async def _read_each() -> list[tuple[str, str, str]]:
    faults = tuple(
        Fault("violation", meters=frozenset({i}), violation=v) for i, v in enumerate(VIOLATIONS)
    )
    simulator = Simulator(
        SimulatorSettings(host="127.0.0.1", port=0),
        SimulatorOptions(meters=len(VIOLATIONS), port_per_meter=True, scenario=Scenario(faults)),
    )
    await simulator.start()
    errors = []
    try:
        for i, violation in enumerate(VIOLATIONS):
            port = simulator.port_of(i)
            link = DeviceLink("127.0.0.1", port, timeout_s=0.3, connect_timeout_s=2)
            try:
                await link.read(3, 0, 1, 1)
            except TransientDeviceError as exc:
                errors.append((violation, str(exc).replace(f"127.0.0.1:{port} ", ""), exc.code))
            finally:
                link.close()
    finally:
        await simulator.stop()
    return errors


def test_each_violation_is_named_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    errors = asyncio.run(_read_each())
    assert errors == [(v, f"{WHAT} {NAMED[v]}", "protocol_violation") for v in VIOLATIONS]
    tracebacks = [r.getMessage() for r in caplog.records if r.exc_info]
    assert tracebacks == []
