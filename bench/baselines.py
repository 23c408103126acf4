"""The two baselines a run is compared with, each client a process of its own reading the
run's simulator once the pipeline has stopped: the ceiling (bare async pymodbus clients reading
the planned requests back to back) and the naive client (one request per register)."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections import defaultdict
from typing import Any

from bench import ROOT
from emm.planner import plan
from simulator.fleet import place
from simulator.model import MeterSpec


def _my_meters(args: argparse.Namespace) -> dict[int, list[int]]:
    """{port: [unit ids]} of the meters this client process reads (its shard)."""
    placements = place(args.meters, port_per_meter=args.port_per_meter)
    by_port: dict[int, list[int]] = defaultdict(list)
    for p in placements:
        if p.index % args.shards == args.shard:
            by_port[args.base_port + p.slot].append(p.slave_address)
    return by_port


async def ceiling_client(args: argparse.Namespace) -> dict[str, Any]:
    """Bare pymodbus async clients, one per port, reading planned requests back to back."""
    from pymodbus.client import AsyncModbusTcpClient

    spec = MeterSpec.of_type(args.profile)
    limits = spec.profile.limits if spec.profile is not None else None
    reads = [(r.function_code, r.address, r.count) for r in plan(spec.registers, limits)]
    by_port = _my_meters(args)
    clients = {}
    for port in by_port:
        client = AsyncModbusTcpClient(
            "127.0.0.1", port=port, timeout=5, retries=0, reconnect_delay=0
        )
        if not await client.connect():
            raise RuntimeError(f"ceiling: cannot connect to port {port}")
        clients[port] = client
    await asyncio.sleep(max(0.0, args.start_at - time.time()))
    deadline = time.monotonic() + args.seconds
    totals = {"meter_reads": 0, "requests": 0, "errors": 0}

    async def loop(port: int, units: list[int], offset: int) -> None:
        client = clients[port]
        calls = {
            1: client.read_coils,
            2: client.read_discrete_inputs,
            3: client.read_holding_registers,
            4: client.read_input_registers,
        }
        i = offset
        while time.monotonic() < deadline:
            unit = units[i % len(units)]
            i += 1
            for fc, address, count in reads:
                response = await calls[fc](address, count=count, device_id=unit)
                totals["requests"] += 1
                if response.isError():
                    totals["errors"] += 1
            totals["meter_reads"] += 1

    started = time.monotonic()
    await asyncio.gather(*(loop(port, units, args.shard) for port, units in by_port.items()))
    elapsed = time.monotonic() - started
    for client in clients.values():
        client.close()
    return {**totals, "seconds": round(elapsed, 3), "connections": len(clients)}


def naive_client(args: argparse.Namespace) -> dict[str, Any]:
    """One synchronous client, one request per register, meter after meter."""
    from pymodbus.client import ModbusTcpClient

    spec = MeterSpec.of_type(args.profile)
    registers = [(r.function_code, r.address, r.data_type.words) for r in spec.registers]
    meters = [(port, unit) for port, units in _my_meters(args).items() for unit in units]
    clients: dict[int, ModbusTcpClient] = {}
    totals = {"meter_reads": 0, "requests": 0, "errors": 0}
    deadline = time.monotonic() + args.seconds
    started = time.monotonic()
    i = 0
    while time.monotonic() < deadline:
        port, unit = meters[i % len(meters)]
        i += 1
        client = clients.get(port)
        if client is None:
            client = clients[port] = ModbusTcpClient("127.0.0.1", port=port, timeout=5, retries=0)
            if not client.connect():
                raise RuntimeError(f"naive: cannot connect to port {port}")
        calls = {
            1: client.read_coils,
            2: client.read_discrete_inputs,
            3: client.read_holding_registers,
            4: client.read_input_registers,
        }
        for fc, address, count in registers:
            response = calls[fc](address, count=count, device_id=unit)
            totals["requests"] += 1
            if response.isError():
                totals["errors"] += 1
        totals["meter_reads"] += 1
    elapsed = time.monotonic() - started
    for client in clients.values():
        client.close()
    return {**totals, "seconds": round(elapsed, 3), "connections": len(clients)}


def _client_argv(
    mode: str,
    cfg: argparse.Namespace,
    base_port: int,
    shard: int,
    shards: int,
    seconds: float,
    start_at: float,
) -> list[str]:
    argv = [sys.executable, "-m", "bench.pipeline", mode, "--meters", str(cfg.meters)]
    argv += ["--profile", cfg.profile, "--base-port", str(base_port), "--shard", str(shard)]
    argv += ["--shards", str(shards), "--seconds", str(seconds), "--start-at", str(start_at)]
    if cfg.port_per_meter:
        argv.append("--port-per-meter")
    return argv


def run_clients(
    mode: str, cfg: argparse.Namespace, base_port: int, processes: int, seconds: float
) -> dict[str, Any]:
    """Run `processes` baseline clients at once (each a process); their summed figures."""
    start_at = time.time() + 3.0  # time to connect before the clock starts
    procs = [
        subprocess.Popen(
            _client_argv(mode, cfg, base_port, k, processes, seconds, start_at),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for k in range(processes)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=seconds + 120)
        if proc.returncode != 0:
            raise RuntimeError(f"{mode} client failed: {err[-2000:]}")
        results.append(json.loads(out))
    secs = max(r["seconds"] for r in results)
    reads = sum(r["meter_reads"] for r in results)
    requests = sum(r["requests"] for r in results)
    return {
        "meter_reads_per_s": round(reads / secs, 1),
        "modbus_requests_per_s": round(requests / secs, 1),
        "requests_per_meter_read": round(requests / reads, 2) if reads else None,
        "meter_reads": reads,
        "requests": requests,
        "errors": sum(r["errors"] for r in results),
        "seconds": secs,
        "processes": processes,
        "connections": sum(r["connections"] for r in results),
    }
