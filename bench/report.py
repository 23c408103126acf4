"""The figures of a run: progress messages, the writer's stats file turned into latencies, the
machine and code measured, and the JSON report (its keys are quoted by docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import ROOT
from bench.depths import DepthSampler
from bench.procstats import ProcSampler
from bench.sinks import SinkCounts


def say(message: str) -> None:
    """Progress on stderr; stdout carries only the JSON result."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def iso(ts_ms: int) -> str:
    """A tick as the scheduler logs it."""
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def read_stats(path: Path) -> list[tuple[int, int, int]]:
    """The writer's stats file (EMM_WRITER_STATS_FILE): (written ms, tick ms, readings) rows."""
    out = []
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:
                out.append((int(parts[0]), int(parts[1]), int(parts[2])))
    return out


def latency_from_stats(
    stats: list[tuple[int, int, int]], ticks: list[int], meters: int
) -> tuple[list[float], dict[int, int], dict[int, int]]:
    """Per-reading tick->stored ms of the window's ticks (first `meters` writes per tick), the
    readings written per tick and each tick's last write time."""
    window = set(ticks)
    written: dict[int, int] = defaultdict(int)
    last: dict[int, int] = {}
    values: list[float] = []
    for written_ms, tick_ms, n in sorted(stats):
        if tick_ms not in window:
            continue
        take = min(n, meters - written[tick_ms])
        if take <= 0:
            continue
        written[tick_ms] += take
        last[tick_ms] = written_ms
        values.extend([float(written_ms - tick_ms)] * take)
    values.sort()
    return values, dict(written), last


def machine() -> dict[str, Any]:
    """What the run ran on: CPUs, RAM, Python, load at the end."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        mem_gib = round(kb / 1024 / 1024, 1)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gib": mem_gib,
        "python": platform.python_version(),
        "loadavg_at_end": [round(x, 2) for x in load] if load else None,
    }


def code_state() -> dict[str, Any]:
    """Which code was measured: the commit, and the service files changed since (uncommitted)."""
    import hashlib

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", *args], capture_output=True, text=True, timeout=30, cwd=ROOT
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout if done.returncode == 0 else ""

    paths = ["emm", "scheduler", "worker", "writer", "simulator"]
    dirty = git("status", "--porcelain", "--", *paths).split("\n")
    diff = git("diff", "HEAD", "--", *paths)
    return {
        "commit": git("rev-parse", "--short", "HEAD").strip() or None,
        "uncommitted": sorted(line[3:] for line in dirty if line.strip()),
        "diff_sha256": hashlib.sha256(diff.encode()).hexdigest()[:12] if diff else None,
    }


def _rate(x: float | None, digits: int = 1) -> float | None:
    return None if x is None else round(x, digits)


def report(cfg: argparse.Namespace, **m: Any) -> dict[str, Any]:
    """The run's JSON object from what `run` measured (`m`)."""
    ticks: list[int] = m["ticks"]
    counts: SinkCounts = m["counts"]
    window_s: float = m["window_s"]
    sampler: ProcSampler = m["sampler"]
    depths: DepthSampler = m["depths"]
    stored = sum(counts.status.get(t, 0) for t in ticks)
    expected = cfg.meters * len(ticks)
    requests = sum(counts.requests.get(t, 0) for t in ticks)
    up = sum(counts.up.get(t, 0) for t in ticks)
    latencies: list[float] = m["latencies"]
    device_ms = sorted(counts.latencies)
    period_s = m["period_ms"] / 1000

    # Little's law per tick: the meters' read times (meter_status.latency_ms, which includes
    # waiting for a gateway's link) summed over the tick / how long the tick's burst took. The
    # burst is taken to end at the tick's last write, which overstates it by up to the writer's
    # flush interval, so both figures are lower bounds. `device_busy` counts only the time the
    # device itself takes (requests x --latency-ms): how many meters' devices were kept busy.
    in_flight, burst_rates = [], []
    for t in ticks:
        span_ms = m["last_written"].get(t, 0) - t
        if span_ms > 0 and t in counts.latency_ms:
            in_flight.append(counts.latency_ms[t] / span_ms)
            burst_rates.append(counts.status.get(t, 0) / (span_ms / 1000))
    in_flight.sort()
    burst_rates.sort()
    burst_rate = percentile(burst_rates, 50)
    device_s = m["planned"] * cfg.latency_ms / 1000

    machine_cpu = sampler.machine_between("start", "end")
    if machine_cpu is not None:
        ours = sum(
            sampler.cpu_between(name, "start", "end") or 0.0
            for name in sampler.tracks
            if "shared" not in name
        )
        # What other processes (RabbitMQ, other people's tests, the bench itself) used.
        machine_cpu["others_cpu_s"] = round(machine_cpu["busy_cpu_s"] - ours, 2)
    components: dict[str, Any] = {}
    for name, track in sampler.tracks.items():
        cpu = sampler.cpu_between(name, "start", "end")
        components[name] = {
            "cpu_s": _rate(cpu, 2),
            "cpu_s_per_1000_readings": _rate(cpu / stored * 1000, 3) if cpu and stored else None,
            "cpu_pct": _rate(100 * cpu / m["window_wall_s"], 1) if cpu is not None else None,
            "peak_rss_mb": _rate(m["peaks"].get(name) or track.peak_rss_mb, 1),
        }

    def depth_at(epoch_s: float) -> dict[str, int | None]:
        d = depths.at(epoch_s)
        return {"emm.jobs": d[0] if d else None, "emm.readings": d[1] if d else None}

    window_samples = [
        s for s in depths.samples if ticks[0] / 1000 <= s[0] < ticks[-1] / 1000 + period_s
    ]
    # Depth just before each tick (and at the window's end): what the last tick left behind.
    before = [depth_at(t / 1000 - 0.05) for t in [*ticks[1:], ticks[-1] + m["period_ms"]]]
    meter_reads_per_s = stored / window_s
    ceiling, naive = m["ceiling"], m["naive"]
    sim_reads = m["sim_reads"]
    baseline_requests = (ceiling or {}).get("requests", 0) + (naive or {}).get("requests", 0)
    result: dict[str, Any] = {
        "config": {
            "meters": cfg.meters,
            "profile": cfg.profile,
            "cron": cfg.cron,
            "period_s": period_s,
            "warmup_s": m["warmup_s"],
            "duration_s": cfg.duration_s,
            "window_s": window_s,
            "ticks": len(ticks),
            "latency_ms": cfg.latency_ms,
            "workers": cfg.workers,
            "concurrency": cfg.concurrency,
            "api": cfg.api,
            "batch_size": cfg.batch_size,
            "flush_interval_ms": cfg.flush_interval_ms or 1000,
            "port_per_meter": cfg.port_per_meter,
            "interleave_gateways": cfg.interleave_gateways,
            "worker_from": cfg.worker_from,
            "ports": m["ports"],
        },
        "offered_reads_per_s": round(cfg.meters / period_s, 1),
        "meter_reads_per_s": round(meter_reads_per_s, 1),
        "readings_expected": expected,
        "readings_stored": stored,
        "readings_lost": expected - stored,
        "readings_up": up,
        "energy_points": counts.energy_points,
        "modbus_requests_per_s": round(requests / window_s, 1),
        "requests_per_meter_read": round(requests / stored, 3) if stored else None,
        "planner_min_requests_per_meter_read": m["planned"],
        "simulator_reads_total": sim_reads,
        "simulator_reads_pipeline": (sim_reads - baseline_requests) if sim_reads else None,
        "tick_to_stored_ms": {
            "p50": percentile(latencies, 50),
            "p95": percentile(latencies, 95),
            "p99": percentile(latencies, 99),
            "max": latencies[-1] if latencies else None,
            "readings": len(latencies),
        },
        "meter_read_ms": {
            "p50": _rate(percentile(device_ms, 50), 1),
            "p99": _rate(percentile(device_ms, 99), 1),
        },
        "in_flight_meters_est": {
            "median": _rate(percentile(in_flight, 50), 1),
            "max": _rate(in_flight[-1], 1) if in_flight else None,
            "per_worker_median": _rate(
                percentile(in_flight, 50) / cfg.workers if in_flight else None, 1
            ),
            "burst_reads_per_s": _rate(burst_rate, 1),
            "device_busy": _rate(burst_rate * device_s, 1) if burst_rate and device_s else None,
        },
        "queue_depth": {
            "start": depth_at(ticks[0] / 1000 - 0.05),
            "end": before[-1],
            "max": {
                "emm.jobs": max((s[1] for s in window_samples), default=None),
                "emm.readings": max((s[2] for s in window_samples), default=None),
            },
            "before_each_tick": [[b["emm.jobs"], b["emm.readings"]] for b in before],
        },
        "components": components,
        "cpu_s_per_1000_readings_total": _rate(
            sum(
                c["cpu_s_per_1000_readings"] or 0.0
                for name, c in components.items()
                if "shared" not in name
            ),
            3,
        ),
        "machine_cpu": machine_cpu,
        "stored_per_tick": [m["per_tick_written"].get(t, 0) for t in ticks],
        "machine": machine(),
        "code": code_state(),
    }
    if ceiling:
        result["ceiling"] = ceiling
        result["ceiling_meter_reads_per_s"] = ceiling["meter_reads_per_s"]
        result["pipeline_vs_ceiling"] = round(meter_reads_per_s / ceiling["meter_reads_per_s"], 3)
    if naive:
        result["naive"] = naive
        result["naive_meter_reads_per_s"] = naive["meter_reads_per_s"]
        result["pipeline_vs_naive"] = round(meter_reads_per_s / naive["meter_reads_per_s"], 2)
    return result
