"""End-to-end throughput and latency of the pipeline on this machine, against two baselines.

    python -m bench.pipeline --meters 1000 --cron '*/10 * * * * *' --duration-s 60 --workers 1
    python -m bench.pipeline --writer-serialise          (micro-benchmark, see bench/writer.py)

Run it from the repository root. Everything it starts listens on 127.0.0.1 only and is stopped
at the end: the simulator (`emm simulator --write-config`, gateway mode: 247 unit ids a port, or
`--port-per-meter`), a fresh PostgreSQL database (`emm migrate`), a private RabbitMQ vhost (made
and deleted with rabbitmqctl), a private InfluxDB 1.x (`--api v1`) or VictoriaMetrics (`--api
v2`) in a temporary folder, then `emm writer`, N x `emm worker` and `emm scheduler` as separate
processes.

Timeline: the ticks of the first `--warmup-s` (default one period, at least 2 s) are warm-up;
the measured window is the ticks of the next `--duration-s`. After the window the scheduler
stops, the last readings drain, and the readings whose tick lies in the window are counted in
the sink. Then, with the pipeline stopped, the same simulator is read by
- the ceiling: bare pymodbus AsyncModbusTcpClient clients, one per port per worker process
  (the connections the workers hold), each reading its meters' planned requests back to back,
  in as many processes as there are workers, for `--ceiling-s`;
- the naive baseline: one synchronous ModbusTcpClient reading every register of every meter
  with its own request, in a loop, for `--naive-s`.

Prints one JSON object (also written to `--out`): stored meter reads/s, Modbus requests/s and
per meter read (against the planner's minimum), tick-to-stored latency (from the writer's
EMM_WRITER_STATS_FILE), queue depths, CPU seconds per 1,000 readings and peak RSS of every
process, readings lost, and the ceiling and naive figures with our ratio to each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import baselines, profiling
from bench.procstats import ProcSampler, peak_rss_mb
from bench.report import iso, latency_from_stats, read_stats, report, say
from bench.stack import Stack
from devservices.postgres import DEFAULT_DSN as DEFAULT_POSTGRES_DSN
from devservices.rabbitmq import DEFAULT_URL as DEFAULT_AMQP
from emm.planner import plan
from emm.schedule import CronSchedule
from simulator.fleet import MAX_UNITS_PER_PORT, place, port_count
from simulator.model import MeterSpec


def window(
    schedule: CronSchedule, warmup_s: float, duration_s: float
) -> tuple[list[int], int, float]:
    """The measured ticks (the first after the warm-up, then those within `duration_s`), the
    window's end (the tick after the last) and its length in seconds."""
    first = schedule.next_after(int(time.time() * 1000) + int(warmup_s * 1000) - 1)
    ticks = [first]
    while True:
        nxt = schedule.next_after(ticks[-1])
        if nxt >= first + duration_s * 1000:
            break
        ticks.append(nxt)
    window_end = schedule.next_after(ticks[-1])
    return ticks, window_end, (window_end - first) / 1000


def _gateway_connections(cfg: argparse.Namespace, path: Path) -> dict[str, Any] | None:
    """With --max-connections: the connections the simulator refused and the most open at once
    per port, over the pipeline's run (before the baselines, whose clients ignore the limit)."""
    if not cfg.max_connections:
        return None
    try:
        stats = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    peaks = stats.get("peak_connections", {})
    return {
        "max_connections": cfg.max_connections,
        "refused": stats.get("refused"),
        "peak_per_port": max(peaks.values(), default=0),
        "peak_connections": peaks,
    }


def _busy_s(path: Path) -> dict[str, float]:
    """The simulator's busy seconds per port so far (from its stats file)."""
    try:
        return {p: float(s) for p, s in json.loads(path.read_text()).get("busy_s", {}).items()}
    except (OSError, ValueError):
        return {}


def _gateway_utilisation(
    load: dict[str, dict[str, float]] | None,
    busy_before: dict[str, float],
    busy_after: dict[str, float],
    window_s: float,
) -> dict[str, Any] | None:
    """Per gateway, the utilisation the workers reported (`gateway_status`, mean over the
    window's ticks) beside the simulator's own: its busy time over the window / the window."""
    if not load:
        return None
    rows = {}
    for gateway, budget in load.items():
        port = gateway.rsplit(":", 1)[1]
        busy = busy_after.get(port, 0.0) - busy_before.get(port, 0.0)
        rows[gateway] = {**budget, "simulator_utilisation": round(busy / window_s, 4)}

    def mean(key: str) -> float:
        return round(sum(r[key] for r in rows.values()) / len(rows), 4)

    return {
        "gateways": len(rows),
        "budget_mean": mean("utilisation_mean"),
        "budget_max": max(r["utilisation_max"] for r in rows.values()),
        "simulator_mean": mean("simulator_utilisation"),
        "simulator_max": max(r["simulator_utilisation"] for r in rows.values()),
        "late": sum(r["late"] for r in rows.values()),
        "per_gateway": rows,
    }


def run(cfg: argparse.Namespace) -> dict[str, Any]:
    """Start the stack, measure the window, run the baselines; the report."""
    schedule = CronSchedule(cfg.cron)
    spec = MeterSpec.of_type(cfg.profile)
    limits = spec.profile.limits if spec.profile is not None else None
    planned = len(plan(spec.registers, limits))
    energy_field = spec.registers[0].name
    ports = port_count(place(cfg.meters, port_per_meter=cfg.port_per_meter))
    period_ms = schedule.period_after(schedule.next_after(int(time.time() * 1000)))
    warmup_s = cfg.warmup_s if cfg.warmup_s is not None else max(period_ms / 1000, 2.0)

    folder = Path(tempfile.mkdtemp(prefix="emm-bench-"))
    sampler = ProcSampler(interval_s=1.0)
    stack = Stack(cfg, folder, sampler)
    procs = stack.procs
    result: dict[str, Any] = {}
    say(f"working in {folder}")
    try:
        with stack:
            stack.start(ports)
            assert stack.sink is not None and stack.depths is not None
            ticks, window_end, window_s = window(schedule, warmup_s, cfg.duration_s)
            first = ticks[0]
            say(
                f"warm-up until {iso(first)}, then {len(ticks)} tick(s) over {window_s:g} s "
                f"to {iso(window_end)}"
            )
            time.sleep(max(0.0, first / 1000 - time.time()))
            sampler.mark("start")
            busy_before = _busy_s(stack.simulator_stats)
            spies = profiling.start_spies(cfg.py_spy, sampler, folder, window_s)
            procs.wait_log(
                "scheduler", re.escape(f"tick {iso(ticks[-1])}"), window_s + period_ms / 1000 + 60
            )
            time.sleep(0.2)
            procs.stop("scheduler")
            stack.drain(ticks, window_end, period_ms)
            sampler.mark("end")
            mark_end_wall = time.time()
            time.sleep(0.6)  # the simulator rewrites its stats every 0.5 s
            busy_after = _busy_s(stack.simulator_stats)
            profiles = profiling.finish_spies(spies, window_s + 30)
            peaks = {name: peak_rss_mb(track.pid) for name, track in sampler.tracks.items()}
            stack.stop_pipeline()

            stats = read_stats(stack.stats_file)
            gateways = _gateway_connections(cfg, stack.simulator_stats)
            if gateways is not None:
                say(
                    f"gateways: {gateways['refused']} connection(s) refused, at most "
                    f"{gateways['peak_per_port']} open at once on a port "
                    f"(--max-connections {cfg.max_connections})"
                )
            latencies, per_tick_written, last_written = latency_from_stats(stats, ticks, cfg.meters)
            counts = stack.sink.count(first, window_end, energy_field)
            utilisation = _gateway_utilisation(
                stack.sink.gateway_load(first, window_end), busy_before, busy_after, window_s
            )
            say("pipeline stopped; counting done")

            ceiling = naive = None
            if cfg.ceiling_s > 0:
                say(f"ceiling: {cfg.workers} process(es) of async clients for {cfg.ceiling_s} s")
                sampler.mark("ceiling_start")
                ceiling = baselines.run_clients(
                    "--ceiling-client", cfg, stack.base_port, cfg.workers, cfg.ceiling_s
                )
                sampler.mark("ceiling_end")
                sim_cpu = sampler.cpu_between("simulator", "ceiling_start", "ceiling_end")
                ceiling["simulator_cpu_s"] = round(sim_cpu, 2) if sim_cpu is not None else None
            if cfg.naive_s > 0:
                say(f"naive: one synchronous client, one register a request, {cfg.naive_s} s")
                naive = baselines.run_clients(
                    "--naive-client", cfg, stack.base_port, 1, cfg.naive_s
                )
            sampler.stop()
            procs.stop("simulator")
            match = re.search(r"simulator stopped: (\d+) reads", procs.log("simulator"))
            sim_reads = int(match.group(1)) if match else None

            result = report(
                cfg,
                ticks=ticks,
                window_s=window_s,
                period_ms=period_ms,
                warmup_s=warmup_s,
                ports=ports,
                planned=planned,
                counts=counts,
                latencies=latencies,
                per_tick_written=per_tick_written,
                last_written=last_written,
                depths=stack.depths,
                sampler=sampler,
                peaks=peaks,
                ceiling=ceiling,
                naive=naive,
                sim_reads=sim_reads,
                window_wall_s=mark_end_wall - first / 1000,
            )
            result["profiles"] = profiles
            if gateways is not None:
                result["gateway_connections"] = gateways
            if utilisation is not None:
                result["gateway_utilisation"] = utilisation
            if cfg.probe_worker:
                with contextlib.suppress(OSError, ValueError):
                    result["worker_probe"] = json.loads(stack.probe_file.read_text())
            if cfg.keep or spies:
                result["folder"] = str(folder)
    finally:
        sampler.stop()
        procs.stop_all()
        if not (cfg.keep or cfg.py_spy):
            shutil.rmtree(folder, ignore_errors=True)
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pipeline",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--meters", type=int, default=100)
    parser.add_argument("--profile", default="sdm630")
    parser.add_argument("--cron", default="*/10 * * * * *", help="EMM_READ_CRON")
    parser.add_argument("--duration-s", type=float, default=60.0, help="measured window")
    parser.add_argument(
        "--warmup-s", type=float, default=None, help="before the window (default: one period)"
    )
    parser.add_argument("--latency-ms", type=float, default=0.0, help="device latency a request")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument(
        "--api",
        choices=("v1", "v2"),
        default="v1",
        help="sink: InfluxDB 1.x (v1) or VictoriaMetrics via the v2 write API",
    )
    parser.add_argument("--concurrency", type=int, default=512, help="EMM_WORKER_CONCURRENCY")
    parser.add_argument("--batch-size", type=int, default=5000, help="EMM_WRITER_BATCH_SIZE")
    parser.add_argument(
        "--flush-interval-ms", type=int, default=0, help="EMM_WRITER_FLUSH_INTERVAL_MS (0: default)"
    )
    parser.add_argument(
        "--port-per-meter", action="store_true", help="each meter on its own port (no gateway)"
    )
    parser.add_argument("--step-s", type=float, default=1.0, help="EMM_SIMULATOR_STEP_S")
    parser.add_argument(
        "--max-connections",
        type=int,
        default=0,
        metavar="N",
        help="each simulator port (gateway) accepts N connections at once (0: any); the "
        "connections refused and the most open at once per port are reported",
    )
    parser.add_argument(
        "--interleave-gateways",
        action="store_true",
        help="store the meter rows round-robin across ports, so the scheduler's jobs alternate "
        "gateways (emulates the scheduler fix described in docs/benchmarks.md)",
    )
    parser.add_argument("--ceiling-s", type=float, default=10.0, help="0: no ceiling run")
    parser.add_argument("--naive-s", type=float, default=10.0, help="0: no naive run")
    parser.add_argument(
        "--py-spy",
        default="",
        metavar="NAMES",
        help="profile these components over the window, e.g. worker-0,writer (keeps the folder)",
    )
    parser.add_argument(
        "--postgres-dsn",
        default=os.environ.get("EMM_BENCH_POSTGRES_DSN", DEFAULT_POSTGRES_DSN),
        help="server to make the database on",
    )
    parser.add_argument(
        "--amqp",
        default=os.environ.get("EMM_BENCH_AMQP", DEFAULT_AMQP),
        help="RabbitMQ (without vhost)",
    )
    parser.add_argument(
        "--worker-from",
        metavar="DIR",
        help="run the workers from this checkout instead (A/B comparisons, e.g. a git worktree)",
    )
    parser.add_argument(
        "--probe-worker",
        action="store_true",
        help="run worker-0 with stage timers (bench/workerprobe.py): where a job's time goes",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument(
        "--writer-serialise", action="store_true", help="only the writer micro-benchmark"
    )
    # The baseline clients, started by the run itself.
    hidden = argparse.SUPPRESS
    parser.add_argument("--ceiling-client", action="store_true", help=hidden)
    parser.add_argument("--naive-client", action="store_true", help=hidden)
    parser.add_argument("--base-port", type=int, help=hidden)
    parser.add_argument("--shard", type=int, default=0, help=hidden)
    parser.add_argument("--shards", type=int, default=1, help=hidden)
    parser.add_argument("--seconds", type=float, default=10.0, help=hidden)
    parser.add_argument("--start-at", type=float, default=0.0, help=hidden)
    return parser


def main(argv: list[str] | None = None) -> None:
    cfg = _parser().parse_args(argv)
    cfg.py_spy = [n for n in cfg.py_spy.split(",") if n]
    if cfg.ceiling_client:
        print(json.dumps(asyncio.run(baselines.ceiling_client(cfg))))
        return
    if cfg.naive_client:
        print(json.dumps(baselines.naive_client(cfg)))
        return
    if cfg.writer_serialise:
        from bench import writer

        result = writer.run(cfg.profile)
    else:
        if cfg.probe_worker and cfg.worker_from:
            raise SystemExit("--probe-worker runs this checkout's worker; drop --worker-from")
        if cfg.meters < 1 or cfg.workers < 1 or cfg.duration_s <= 0:
            raise SystemExit("--meters, --workers and --duration-s must be positive")
        if cfg.meters > MAX_UNITS_PER_PORT * 200 and not cfg.port_per_meter:
            raise SystemExit("too many meters for one simulator")
        result = run(cfg)
    text = json.dumps(result)
    if cfg.out:
        Path(cfg.out).write_text(json.dumps(result, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
