"""The simulator as a gateway: a limit on connections per port, counted, and RTU framing over TCP
read with pymodbus's RTU framer."""

from __future__ import annotations

import asyncio
import json
import signal
import struct
import time
from pathlib import Path

import pytest
from pymodbus import FramerType
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.framer import FramerRTU

from devservices.net import free_port, port_open, wait_for
from devservices.processes import Processes
from emm.codec import RequestDecoder
from emm.planner import assign, plan
from emm.settings import SimulatorSettings
from simulator.app import Simulator, SimulatorOptions
from simulator.model import MeterSpec, expected, resolve_profile

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SETTINGS = SimulatorSettings(host="127.0.0.1", port=0, step_s=1.0, log_level="WARNING")
READ = struct.pack(">HHHBBHH", 1, 0, 6, 1, 3, 0, 1)  # MBAP + FC3 read of 1 at 0, unit 1
T_S = 1_750_000_000.0  # the meters' time (injected)


async def read_meter(client: AsyncModbusTcpClient, spec: MeterSpec, unit: int) -> dict[str, float]:
    """Every register of `spec`, read as the worker plans and decodes them."""
    limits = spec.profile.limits if spec.profile is not None else None
    values: dict[str, float] = {}
    for request, covered in assign(plan(spec.registers, limits), spec.registers):
        assert request.function_code in (3, 4)
        call = client.read_input_registers
        if request.function_code == 3:
            call = client.read_holding_registers
        response = await call(request.address, count=request.count, device_id=unit)
        assert not response.isError(), f"{request}: {response}"
        decoder = RequestDecoder.build(request.address, request.count, covered)
        decoded, missing = decoder.decode(response.registers)
        assert not missing
        values.update(decoded)
    return values


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def answered(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(READ)
    return await asyncio.wait_for(reader.read(100), 2)


def test_a_connection_beyond_the_limit_is_closed_at_once_and_counted() -> None:
    async def main() -> None:
        options = SimulatorOptions(meters=3, max_connections=1)
        simulator = Simulator(SETTINGS, options, clock=lambda: T_S)
        await simulator.start()
        try:
            port = simulator.port_of(0)
            first = await connect(port)
            assert len(await answered(*first)) == 11  # MBAP 7 + fc, count, one register
            second = await connect(port)
            assert await asyncio.wait_for(second[0].read(100), 2) == b""  # closed at once
            assert len(await answered(*first)) == 11  # the first is untouched
            first[1].close()
            second[1].close()
            await asyncio.sleep(0.1)
            third = await connect(port)  # room again
            assert len(await answered(*third)) == 11
            third[1].close()
            await asyncio.sleep(0.05)
            stats = simulator.stats
            assert (stats.connections, stats.refused) == (2, 1)
            assert stats.peaks == {port: 1}
            assert stats.refused_by_port == {port: 1}
        finally:
            await simulator.stop()

    asyncio.run(main())


def test_without_a_limit_the_peak_is_counted_per_port() -> None:
    async def main() -> None:
        simulator = Simulator(SETTINGS, SimulatorOptions(meters=2, units_per_port=1))
        await simulator.start()
        try:
            a, b = simulator.port_of(0), simulator.port_of(1)
            streams = [await connect(a) for _ in range(3)] + [await connect(b)]
            await asyncio.sleep(0.05)
            assert simulator.stats.peaks == {a: 3, b: 1}
            assert simulator.stats.refused == 0
            for _reader, writer in streams:
                writer.close()
        finally:
            await simulator.stop()

    asyncio.run(main())


@pytest.mark.parametrize("profile", ["sdm630", "sdm120"])
def test_rtu_framing_reads_as_expected_with_pymodbus_rtu_framer(profile: str) -> None:
    async def main() -> None:
        options = SimulatorOptions(meters=2, profile=resolve_profile(profile), framing="rtu")
        simulator = Simulator(SETTINGS, options, clock=lambda: T_S)
        await simulator.start()
        client = AsyncModbusTcpClient(
            "127.0.0.1",
            port=simulator.port_of(0),
            framer=FramerType.RTU,
            timeout=2,
            retries=0,
            reconnect_delay=0,
        )
        try:
            assert await client.connect()
            for unit in (1, 2):
                spec = MeterSpec.of_type(profile, seed=unit - 1, step_s=1.0)
                got = await read_meter(client, spec, unit)
                assert got == expected(spec, int(T_S * 1000))
        finally:
            client.close()
            await simulator.stop()

    asyncio.run(main())


def test_rtu_framing_ignores_a_garbled_frame_and_answers_the_next() -> None:
    async def main() -> None:
        options = SimulatorOptions(meters=1, framing="rtu")
        simulator = Simulator(SETTINGS, options, clock=lambda: T_S)
        await simulator.start()
        try:
            reader, writer = await connect(simulator.port_of(0))
            request = bytes((1, 3, 0, 0, 0, 1))
            good = request + FramerRTU.compute_CRC(request).to_bytes(2, "big")
            writer.write(good[:-1] + bytes((good[-1] ^ 0xFF,)) + good)
            answer = await asyncio.wait_for(reader.read(100), 2)
            assert answer[:3] == bytes((1, 3, 2)) and len(answer) == 7
            assert FramerRTU.check_CRC(answer[:-2], int.from_bytes(answer[-2:], "big"))
            writer.close()
        finally:
            await simulator.stop()

    asyncio.run(main())


def test_the_command_writes_its_stats_file_and_logs_the_peaks(
    processes: Processes, tmp_path: Path
) -> None:
    port = free_port()
    stats_file = tmp_path / "stats.json"
    args = ["simulator", "--meters", "2", "--host", "127.0.0.1", "--port", str(port)]
    args += ["--max-connections", "1", "--stats-file", str(stats_file)]
    proc = processes.start("simulator", args, {"EMM_LOG_LEVEL": "INFO"})
    wait_for(lambda: port_open("127.0.0.1", port), 15)
    time.sleep(0.5)  # the probe's connection closed on both sides

    async def two() -> None:
        first = await connect(port)
        second = await connect(port)
        assert await asyncio.wait_for(second[0].read(100), 2) == b""
        for _reader, writer in (first, second):
            writer.close()
            await writer.wait_closed()

    asyncio.run(two())
    deadline = time.monotonic() + 5
    stats: dict = {}
    while time.monotonic() < deadline:
        if stats_file.exists():
            stats = json.loads(stats_file.read_text())
            if stats.get("refused") == 1:
                break
        time.sleep(0.1)
    # accepted: port_open's probe and the first; refused: the second
    assert stats["refused"] == 1 and stats["peak_connections"] == {str(port): 1}, stats
    proc.send_signal(signal.SIGTERM)
    proc.wait(15)
    log = processes.log("simulator")
    assert f'most open at once per port: {{"{port}": 1}}' in log
    assert "1 refused" in log
