"""Throughput of the simulator: Modbus TCP requests per second on loopback.

    python -m bench.simulator [--seconds 10] [--connections 16] [--meters 100] [--profile sdm630]

Starts `python -m simulator` (one process, so one core) in a subprocess, then hammers it from
another process with raw Modbus TCP clients (one request in flight per connection, as pymodbus
clients do), each cycling over the unit ids of the first port and the profile's planned reads.
Prints one JSON object: requests answered per second, errors (exception answers or short
reads), and the simulator process's CPU time over the run. Target: at least 3,000 requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from bench import ROOT
from devservices.net import free_port
from emm.planner import plan
from simulator.fleet import MAX_UNITS_PER_PORT
from simulator.model import MeterSpec

TARGET_REQUESTS_PER_S = 3000.0
_MBAP = struct.Struct(">HHHB")
_READ = struct.Struct(">BHH")


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the simulator exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the simulator did not listen on port {port} within {timeout_s:.0f} s")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc), 0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _connection(
    port: int, units: int, reads: list[tuple[int, int, int]], seconds: float, offset: int
) -> tuple[int, int]:
    """Send reads one at a time for `seconds`; returns (answered, errors)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answered = errors = 0
    tid = 0
    i = offset
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            fc, address, count = reads[i % len(reads)]
            unit = 1 + (i // len(reads)) % units
            i += 1
            tid = (tid + 1) & 0xFFFF
            writer.write(_MBAP.pack(tid, 0, 6, unit) + _READ.pack(fc, address, count))
            header = await reader.readexactly(7)
            _, _, length, _ = _MBAP.unpack(header)
            pdu = await reader.readexactly(length - 1)
            answered += 1
            if pdu[0] & 0x80 or pdu[1] != 2 * count:
                errors += 1
    finally:
        writer.close()
    return answered, errors


async def _hammer(port: int, units: int, profile: str, seconds: float, connections: int) -> dict:
    spec = MeterSpec.of_type(profile)
    limits = spec.profile.limits if spec.profile is not None else None
    reads = [(r.function_code, r.address, r.count) for r in plan(spec.registers, limits)]
    started = time.monotonic()
    results = await asyncio.gather(
        *(_connection(port, units, reads, seconds, k * 7) for k in range(connections))
    )
    elapsed = time.monotonic() - started
    return {
        "requests": sum(a for a, _ in results),
        "errors": sum(e for _, e in results),
        "seconds": round(elapsed, 3),
        "reads_per_cycle": len(reads),
    }


def run(seconds: float, connections: int, meters: int, profile: str) -> dict:
    """Start the simulator, hammer it from a second process, and return the figures."""
    port = free_port()
    env = {**os.environ, "EMM_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)}
    server_argv = [sys.executable, "-m", "simulator", "--profile", profile]
    server_argv += ["--meters", str(meters), "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(server_argv, env=env, cwd=ROOT)
    try:
        _wait_listening(port, server)
        cpu_before = _cpu_s(server.pid)
        client_argv = [sys.executable, "-m", "bench.simulator", "--hammer", str(port)]
        client_argv += ["--profile", profile, "--units", str(min(meters, MAX_UNITS_PER_PORT))]
        client_argv += ["--seconds", str(seconds), "--connections", str(connections)]
        client = subprocess.run(
            client_argv,
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=True,
        )
        server_cpu_s = _cpu_s(server.pid) - cpu_before
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
    figures = json.loads(client.stdout)
    rate = figures["requests"] / figures["seconds"]
    return {
        "requests_per_s": round(rate),
        "target_requests_per_s": TARGET_REQUESTS_PER_S,
        "ok": rate >= TARGET_REQUESTS_PER_S and figures["errors"] == 0,
        **figures,
        "server_cpu_s": round(server_cpu_s, 2),
        "server_cpu_share": round(server_cpu_s / figures["seconds"], 2),
        "profile": profile,
        "meters": meters,
        "connections": connections,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.simulator", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--meters", type=int, default=100)
    parser.add_argument("--profile", default="sdm630")
    parser.add_argument("--hammer", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--units", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.hammer:
        result = asyncio.run(
            _hammer(args.hammer, args.units, args.profile, args.seconds, args.connections)
        )
    else:
        result = run(args.seconds, args.connections, args.meters, args.profile)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
