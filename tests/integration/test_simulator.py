"""The simulator as a client sees it: a real TCP server on loopback, read with pymodbus.

Servers run in-process on 127.0.0.1 with free ports and an injected clock, so what a reading must
contain is known exactly (`simulator.model.expected`) and faults that depend on time are driven
by the test. PostgreSQL (for `--write-config`) comes from the `pg_dsn` fixture.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from devservices.net import free_port
from devservices.processes import emm_command
from emm.codec import RequestDecoder
from emm.planner import assign, plan
from emm.profiles import shipped_profiles
from emm.settings import SimulatorSettings
from simulator.app import Simulator, SimulatorOptions, run
from simulator.faults import Fault, Scenario
from simulator.model import MeterSpec, expected, resolve_profile
from simulator.repo import write_config

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TICK_MS = 1_750_000_000_000  # a fixed wall-clock time for the injected clock
SETTINGS = SimulatorSettings(host="127.0.0.1", port=0, step_s=1.0, log_level="WARNING")


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, t_s: float = TICK_MS / 1000) -> None:
        self.t_s = t_s

    def __call__(self) -> float:
        return self.t_s


def arun(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


@asynccontextmanager
async def serving(
    options: SimulatorOptions | None = None,
    clock: Callable[[], float] | None = None,
    settings: SimulatorSettings = SETTINGS,
) -> AsyncIterator[Simulator]:
    simulator = Simulator(settings, options, clock=clock or Clock())
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


@asynccontextmanager
async def client(port: int, timeout_s: float = 2.0) -> AsyncIterator[AsyncModbusTcpClient]:
    c = AsyncModbusTcpClient(
        "127.0.0.1", port=port, timeout=timeout_s, retries=0, reconnect_delay=0
    )
    assert await c.connect(), f"cannot connect to port {port}"
    try:
        yield c
    finally:
        c.close()


async def read(c: AsyncModbusTcpClient, fc: int, address: int, count: int, unit: int) -> Any:
    call = {
        1: c.read_coils,
        2: c.read_discrete_inputs,
        3: c.read_holding_registers,
        4: c.read_input_registers,
    }[fc]
    return await call(address, count=count, device_id=unit)


async def read_meter(c: AsyncModbusTcpClient, spec: MeterSpec, unit: int) -> dict[str, float]:
    """Read every register of `spec` the way the worker does: planned requests, bulk decode."""
    limits = spec.profile.limits if spec.profile is not None else None
    values: dict[str, float] = {}
    for request, covered in assign(plan(spec.registers, limits), spec.registers):
        response = await read(c, request.function_code, request.address, request.count, unit)
        assert not response.isError(), f"{request}: {response}"
        decoded, missing = RequestDecoder.build(request.address, request.count, covered).decode(
            response.registers
        )
        assert not missing
        values.update(decoded)
    return values


def options(
    profile: str | None = None, meters: int | None = None, *faults: Fault, **more: Any
) -> SimulatorOptions:
    return SimulatorOptions(
        meters=meters,
        profile=None if profile is None else resolve_profile(profile),
        scenario=Scenario(tuple(faults)),
        **more,
    )


# --- values -----------------------------------------------------------------------------------


def test_default_is_the_original_virtual_meter_on_any_unit_id() -> None:
    async def main() -> None:
        async with serving() as sim, client(sim.port_of(0)) as c:
            want = expected(0, TICK_MS)["test_measurement"]
            for unit in (0, 1, 17, 247):
                response = await read(c, 3, 0, 1, unit)
                assert not response.isError()
                assert float(response.registers[0]) == want
            response = await read(c, 3, 1, 1, 1)  # only holding register 0 exists
            assert response.isError() and response.exception_code == 2
            response = await read(c, 4, 0, 1, 1)
            assert response.isError() and response.exception_code == 2

    arun(main())


def test_sdm630_reading_matches_expected_to_the_last_bit() -> None:
    async def main() -> None:
        async with serving(options("sdm630", 3)) as sim, client(sim.port_of(0)) as c:
            for index in (0, 2):
                got = await read_meter(c, sim.specs[index], unit=index + 1)
                want = expected(sim.specs[index], TICK_MS)
                assert got == want
                assert len(got) == len(sim.specs[index].registers)
            # Different seeds, different meters.
            assert await read_meter(c, sim.specs[1], 2) != await read_meter(c, sim.specs[0], 1)

    arun(main())


@pytest.mark.parametrize("profile", [p.type for p in shipped_profiles()])
def test_every_shipped_profile_reads_as_expected(profile: str) -> None:
    clock = Clock()

    async def main() -> None:
        async with serving(options(profile, 4), clock) as sim, client(sim.port_of(0)) as c:
            spec = sim.specs[3]  # seed 3: a prosumer, so export counters move too
            for _ in range(3):
                tick_ms = round(clock.t_s * 1000)
                assert await read_meter(c, spec, unit=4) == expected(spec, tick_ms)
                clock.t_s += 3600.5

    arun(main())


def test_reads_between_steps_see_the_nearest_step() -> None:
    clock = Clock()

    async def main() -> None:
        async with serving(options("sdm120", 1), clock) as sim, client(sim.port_of(0)) as c:
            spec = sim.specs[0]
            clock.t_s = TICK_MS / 1000 + 0.4  # less than half a step after the tick
            assert await read_meter(c, spec, 1) == expected(spec, TICK_MS)

    arun(main())


# --- faults -----------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [2, 4, 6, 11])
def test_exception_fault_answers_that_exact_code(code: int) -> None:
    async def main() -> None:
        fault = Fault("exception", frozenset({1}), code=code)
        async with serving(options("sdm630", 2, fault)) as sim, client(sim.port_of(0)) as c:
            response = await read(c, 4, 0, 2, unit=2)
            assert response.isError() and response.exception_code == code
            response = await read(c, 4, 0, 2, unit=1)  # meter 0 is not affected
            assert not response.isError()
            assert sim.stats.exceptions[code] == 1

    arun(main())


def test_timeout_fault_never_answers() -> None:
    async def main() -> None:
        async with serving(options("sdm630", 1, Fault("timeout"))) as sim:
            async with client(sim.port_of(0), timeout_s=0.3) as c:
                started = time.monotonic()
                with pytest.raises(ModbusException):
                    await read(c, 4, 0, 2, unit=1)
                assert time.monotonic() - started >= 0.3
            assert sim.stats.dropped == 1 and sim.stats.reads == 0

    arun(main())


def test_reset_fault_resets_the_connection() -> None:
    async def main() -> None:
        async with serving(options("sdm630", 1, Fault("reset"))) as sim:
            async with client(sim.port_of(0)) as c:
                with pytest.raises(ModbusException):
                    await read(c, 4, 0, 2, unit=1)
                await asyncio.sleep(0.05)
                assert not c.connected
            # A raw socket shows it is a reset (RST), not an orderly close.
            reader, writer = await asyncio.open_connection("127.0.0.1", sim.port_of(0))
            writer.write(struct.pack(">HHHBBHH", 1, 0, 6, 1, 4, 0, 2))
            with pytest.raises(ConnectionResetError):
                await reader.read(100)
            writer.close()
            assert sim.stats.resets == 2

    arun(main())


def test_reboot_refuses_connections_then_accepts_with_energy_from_zero() -> None:
    clock = Clock()
    reboot = Fault("reboot", after_s=0, for_s=30, reset_energy=True)

    async def main() -> None:
        async with serving(options("sdm630", 1, reboot), clock) as sim:
            port = sim.port_of(0)
            with pytest.raises(OSError):  # refused: nothing listens on the port
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            c = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
            assert not await c.connect()
            c.close()

            clock.t_s += 31
            deadline = time.monotonic() + 5
            while not await _can_connect(port):
                assert time.monotonic() < deadline, "port did not accept connections again"
                await asyncio.sleep(0.05)
            async with client(port) as c:
                got = await read_meter(c, sim.specs[0], 1)
            assert got == expected(sim.specs[0], round(clock.t_s * 1000))
            # One second of power since the reboot ended, not years of it.
            assert 0 < got["importActiveEnergy"] < 0.01
            assert got["totalActiveEnergy"] < 0.01

    arun(main())


async def _can_connect(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


def test_reboot_resets_open_connections_when_it_starts() -> None:
    clock = Clock()
    reboot = Fault("reboot", after_s=10, for_s=30, every_s=600)

    async def main() -> None:
        async with serving(options("sdm630", 1, reboot), clock) as sim:
            async with client(sim.port_of(0)) as c:
                assert not (await read(c, 4, 0, 2, 1)).isError()
                clock.t_s += 10
                deadline = time.monotonic() + 5
                while c.connected:
                    assert time.monotonic() < deadline, "connection survived the reboot"
                    await asyncio.sleep(0.05)
            assert not await _can_connect(sim.port_of(0))

    arun(main())


def test_reboot_behind_a_shared_gateway_port_answers_exception_11() -> None:
    reboot = Fault("reboot", frozenset({1}), after_s=0, for_s=60)

    async def main() -> None:
        async with serving(options("sdm630", 3, reboot)) as sim, client(sim.port_of(0)) as c:
            response = await read(c, 4, 0, 2, unit=2)
            assert response.isError() and response.exception_code == 11
            assert not (await read(c, 4, 0, 2, unit=1)).isError()
            assert not (await read(c, 4, 0, 2, unit=3)).isError()

    arun(main())


def test_latency_delays_answers_by_at_least_the_fixed_part() -> None:
    latency = Fault("latency", fixed_ms=200, jitter_ms=50)

    async def main() -> None:
        async with serving(options("sdm120", 1, latency)) as sim, client(sim.port_of(0)) as c:
            for _ in range(3):
                started = time.monotonic()
                response = await read(c, 4, 0, 2, unit=1)
                elapsed = time.monotonic() - started
                assert not response.isError()
                assert 0.2 <= elapsed < 1.0

    arun(main())


def test_holes_answer_exception_2() -> None:
    hole = Fault("hole", function_code=4, ranges=((70, 72),))  # frequency

    async def main() -> None:
        async with serving(options("sdm630", 1, hole)) as sim, client(sim.port_of(0)) as c:
            for address, count in ((70, 2), (60, 20), (71, 1)):
                response = await read(c, 4, address, count, unit=1)
                assert response.isError() and response.exception_code == 2, (address, count)
            assert not (await read(c, 4, 0, 70, unit=1)).isError()
            assert not (await read(c, 4, 72, 10, unit=1)).isError()

    arun(main())


def test_writes_answer_exception_1_and_are_counted() -> None:
    async def main() -> None:
        async with serving() as sim, client(sim.port_of(0)) as c:
            before = (await read(c, 3, 0, 1, 1)).registers
            response = await c.write_register(0, 1234, device_id=1)
            assert response.isError() and response.exception_code == 1
            response = await c.write_registers(0, [1, 2], device_id=1)
            assert response.isError() and response.exception_code == 1
            response = await c.write_coil(0, True, device_id=1)
            assert response.isError() and response.exception_code == 1
            assert sim.stats.writes_refused == 3
            assert (await read(c, 3, 0, 1, 1)).registers == before

    arun(main())


def test_gateway_answers_exception_10_for_a_unit_it_does_not_have() -> None:
    async def main() -> None:
        async with serving(options("sdm630", 2)) as sim, client(sim.port_of(0)) as c:
            response = await read(c, 4, 0, 2, unit=3)
            assert response.isError() and response.exception_code == 10

    arun(main())


def test_out_of_range_counts_answer_exception_3() -> None:
    async def main() -> None:
        async with serving(options("sdm630", 1)) as sim:
            reader, writer = await asyncio.open_connection("127.0.0.1", sim.port_of(0))
            for count in (0, 126):
                writer.write(struct.pack(">HHHBBHH", 9, 0, 6, 1, 4, 0, count))
                header = await reader.readexactly(7)
                assert struct.unpack(">HHHB", header) == (9, 0, 3, 1)
                assert await reader.readexactly(2) == bytes((0x84, 3))
            writer.close()

    arun(main())


# --- many meters ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_thousand_meters_behind_gateway_ports() -> None:
    async def main() -> None:
        async with serving(options("sdm72d_m2", 1000)) as sim:
            assert len(sim.servers) == 5  # 247 unit ids per port
            for index in (0, 246, 247, 500, 988, 999):
                placement = sim.placements[index]
                async with client(sim.port_of(index)) as c:
                    got = await read_meter(c, sim.specs[index], placement.unit_id)
                assert got == expected(sim.specs[index], TICK_MS)
            assert sim.placements[999].unit_id == 999 - 4 * 247 + 1

    arun(main())


@pytest.mark.timeout(60)
def test_a_thousand_meters_on_a_port_each() -> None:
    async def main() -> None:
        async with serving(options("sdm120", 1000, port_per_meter=True)) as sim:
            ports = {server.port for server in sim.servers}
            assert len(ports) == 1000
            for index in range(0, 1000, 25):
                async with client(sim.port_of(index)) as c:
                    response = await read(c, 4, 0, 2, unit=index % 200 + 1)  # any unit id
                assert not response.isError()
                decoded, _ = RequestDecoder.build(0, 2, sim.specs[index].registers[:1]).decode(
                    response.registers
                )
                assert decoded["voltageL1"] == expected(sim.specs[index], TICK_MS)["voltageL1"]

    arun(main())


# --- command line -----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_emm_simulator_command_serves_a_profile_with_faults() -> None:
    port = free_port()
    env = {**os.environ, "EMM_LOG_LEVEL": "WARNING", "EMM_SIMULATOR_PORT": str(port)}
    args = "--profile sdm120 --meters 2 --host 127.0.0.1 --exception 6 --fault-meters 1"
    proc = subprocess.Popen(
        [*emm_command(), "simulator", *shlex.split(args)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:

        async def main() -> None:
            deadline = time.monotonic() + 20
            while not await _can_connect(port):
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, "the simulator did not start"
                await asyncio.sleep(0.1)
            async with client(port) as c:
                response = await read(c, 4, 0, 2, unit=1)
                assert not response.isError()
                volts = c.convert_from_registers(response.registers, c.DATATYPE.FLOAT32)
                assert 220 < volts < 240
                response = await read(c, 4, 0, 2, unit=2)
                assert response.isError() and response.exception_code == 6

        arun(main())
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr


def test_emm_simulator_rejects_a_bad_option_with_a_message() -> None:
    result = subprocess.run(
        [*emm_command(), "simulator", "--profile", "no_such_meter"],
        env={**os.environ, "EMM_SIMULATOR_PORT": str(free_port())},
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "unknown profile 'no_such_meter'" in result.stderr


@pytest.mark.timeout(60)
def test_bench_reaches_the_throughput_target() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.simulator",
            *shlex.split("--seconds 1 --connections 4 --meters 5"),
        ],
        capture_output=True,
        text=True,
        timeout=50,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["errors"] == 0 and figures["requests"] > 0
    assert figures["ok"], figures


# --- PostgreSQL -------------------------------------------------------------------------------


def _load(dsn: str) -> Any:
    from postgres.config import load_config
    from postgres.connection import connect

    with connect(dsn) as conn:
        return load_config(conn)


def test_write_config_registers_meters_once(pg_dsn: str) -> None:
    async def main() -> None:
        async with serving(options("sdm630", 300)) as sim:
            profile = sim.options.profile
            assert profile is not None
            first = write_config(pg_dsn, profile, sim.rows("10.0.0.5"))
            again = write_config(pg_dsn, profile, sim.rows("10.0.0.5"))
            assert (first.added, first.updated) == (300, 0)
            assert (again.added, again.updated, again.unchanged) == (0, 0, 300)
            # another simulator's meters (another host, or another port): rows of their own,
            # the first simulator's rows untouched
            other = write_config(pg_dsn, profile, sim.rows("10.0.0.6"))
            assert (other.added, other.updated, other.unchanged) == (300, 0, 0)
            ports = {s.port for s in sim.servers}

        config = _load(pg_dsn)
        assert not config.errors
        assert len(config.meters) == 600
        by_address = {(m.meter.host, m.meter.port, m.meter.unit_id): m for m in config.meters}
        assert len(by_address) == 600
        sim_247 = [m for m in config.meters if m.meter.description == "sim-247"]
        assert sorted(m.meter.host for m in sim_247) == ["10.0.0.5", "10.0.0.6"]
        assert {(m.meter.type, m.meter.unit_id) for m in sim_247} == {("sdm630", 1)}
        assert {m.meter.port for m in config.meters} == ports
        assert {r.name for r in sim_247[0].registers} == {r.name for r in profile.registers}

    arun(main())


def test_write_config_option_registers_the_virtual_meters(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMM_POSTGRES_DSN", pg_dsn)

    async def main() -> None:
        stop = asyncio.Event()
        opts = options(None, 3, write_config=True, advertise_host="sim.example")
        task = asyncio.create_task(run(SETTINGS, stop, opts))
        deadline = time.monotonic() + 20
        while True:
            await asyncio.sleep(0.1)
            assert not task.done(), task.exception() if task.done() else None
            try:
                config = await asyncio.to_thread(_load, pg_dsn)
            except Exception:  # the schema may not exist yet
                config = None
            if config is not None and len(config.meters) == 3:
                break
            assert time.monotonic() < deadline, "meters were not registered"
        stop.set()
        await asyncio.wait_for(task, 10)
        assert {m.meter.type for m in config.meters} == {"virtual_modbustcp"}
        assert {m.meter.host for m in config.meters} == {"sim.example"}
        assert sorted(m.meter.unit_id for m in config.meters) == [1, 2, 3]

    arun(main())
