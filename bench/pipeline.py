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
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.procstats import ProcSampler, listener_pid, peak_rss_mb
from devservices.net import free_port_run
from devservices.processes import Processes, emm_command
from emm.planner import plan
from emm.schedule import CronSchedule
from simulator.fleet import MAX_UNITS_PER_PORT, place, port_count
from simulator.model import MeterSpec

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672"
QUEUES = ("emm.jobs", "emm.readings")
STATUS_FIELDS = ("requests", "latency_ms", "up")


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


# --------------------------------------------------------------------------- processes


# --------------------------------------------------------------------------- outside services


def rabbitmqctl(*args: str) -> subprocess.CompletedProcess[str]:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        raise RuntimeError("rabbitmqctl not found: a private vhost is needed for the benchmark")
    return subprocess.run([ctl, *args], capture_output=True, text=True, timeout=120)


@contextlib.contextmanager
def private_vhost(amqp_base: str):
    """A fresh RabbitMQ vhost for the run (guest may use it), deleted afterwards."""
    vhost = f"emm-bench-{uuid.uuid4().hex[:10]}"
    made = rabbitmqctl("add_vhost", vhost)
    if made.returncode != 0:
        raise RuntimeError(f"rabbitmqctl add_vhost failed: {made.stderr.strip()}")
    try:
        perms = rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        if perms.returncode != 0:
            raise RuntimeError(f"rabbitmqctl set_permissions failed: {perms.stderr.strip()}")
        yield f"{amqp_base.rstrip('/')}/{urllib.parse.quote(vhost, safe='')}"
    finally:
        rabbitmqctl("delete_vhost", vhost)


@contextlib.contextmanager
def fresh_database(admin_dsn: str):
    """A new, empty PostgreSQL database, dropped afterwards."""
    import psycopg2

    name = f"emm_bench_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(admin_dsn)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        parts = urllib.parse.urlsplit(admin_dsn)
        try:
            yield urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))
        finally:
            with admin.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


class DepthSampler:
    """Ready messages in emm.jobs and emm.readings, every `interval_s`, in a thread."""

    def __init__(self, amqp_url: str, interval_s: float = 0.5) -> None:
        self.amqp_url = amqp_url
        self.interval_s = interval_s
        self.samples: list[tuple[float, int, int]] = []  # (epoch s, jobs, readings)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="depths", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        import pika

        conn = None
        while not self._stop.is_set():
            try:
                if conn is None or conn.is_closed:
                    conn = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
                    channel = conn.channel()
                depths = []
                for queue in QUEUES:
                    ok = channel.queue_declare(queue, passive=True)
                    depths.append(int(ok.method.message_count))
                self.samples.append((time.time(), depths[0], depths[1]))
                conn.sleep(self.interval_s)
            except Exception:  # the queues may not exist yet, or the broker blinked
                with contextlib.suppress(Exception):
                    if conn is not None and conn.is_open:
                        conn.close()
                conn = None
                self._stop.wait(self.interval_s)
        with contextlib.suppress(Exception):
            if conn is not None and conn.is_open:
                conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def at(self, epoch_s: float) -> tuple[int, int] | None:
        """The last sample taken at or before `epoch_s`."""
        best = None
        for t, jobs, readings in self.samples:
            if t <= epoch_s:
                best = (jobs, readings)
        return best


def interleave_gateways(dsn: str) -> None:
    """Renumber the meters round-robin across host:port (unit 1 of every port, then unit 2...).

    The scheduler publishes a tick's jobs in meter id order. Meters registered gateway by
    gateway make consecutive jobs share a gateway, whose reads a worker serialises; this
    emulates a scheduler that interleaves the gateways instead (only the `meter_id` tags change).
    """
    import psycopg2

    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("UPDATE energy_meters SET id = id + 1000000000")
            cur.execute(
                """UPDATE energy_meters AS m SET id = n.rank
                   FROM (SELECT id, row_number() OVER (ORDER BY slave_address, port, host)
                         AS rank FROM energy_meters) AS n
                   WHERE m.id = n.id"""
            )
    finally:
        conn.close()


# --------------------------------------------------------------------------- the sink


@dataclass
class SinkCounts:
    """What the sink holds for the window, per tick."""

    status: dict[int, int] = field(default_factory=dict)  # tick -> meter_status points
    up: dict[int, int] = field(default_factory=dict)
    requests: dict[int, float] = field(default_factory=dict)
    latency_ms: dict[int, float] = field(default_factory=dict)  # sum per tick
    latencies: list[float] = field(default_factory=list)
    energy_points: int = 0


def _http_json_stream(url: str, data: bytes | None = None, timeout_s: float = 120) -> list[Any]:
    """Every JSON value of a (possibly chunked, newline separated) response."""
    with urllib.request.urlopen(url, data=data, timeout=timeout_s) as resp:
        text = resp.read().decode()
    out, decoder, pos = [], json.JSONDecoder(), 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return out
        value, pos = decoder.raw_decode(text, pos)
        out.append(value)


class Sink:
    """The private InfluxDB 1.x or VictoriaMetrics: settings for the writer, counting after."""

    def __init__(self, api: str, service: Any) -> None:
        self.api = api
        self.service = service
        self.url = service.url
        self.database = "energy"
        if api == "v1":
            body = urllib.parse.urlencode({"q": f'CREATE DATABASE "{self.database}"'}).encode()
            urllib.request.urlopen(f"{self.url}/query", data=body, timeout=30).read()

    def writer_env(self) -> dict[str, str]:
        env = {
            "EMM_INFLUX_URL": self.url,
            "EMM_INFLUX_API": self.api,
            "EMM_INFLUX_BUCKET": self.database,
        }
        if self.api == "v2":
            env.update({"EMM_INFLUX_ORG": "emm", "EMM_INFLUX_TOKEN": "bench"})
        return env

    def count(self, start_ms: int, end_ms: int, energy_field: str) -> SinkCounts:
        if self.api == "v1":
            return self._count_v1(start_ms, end_ms, energy_field)
        return self._count_v2(start_ms, end_ms, energy_field)

    def _influxql(self, q: str) -> list[dict[str, Any]]:
        params = urllib.parse.urlencode(
            {"db": self.database, "q": q, "epoch": "ms", "chunked": "true", "chunk_size": "20000"}
        )
        rows: list[dict[str, Any]] = []
        for chunk in _http_json_stream(f"{self.url}/query?{params}"):
            for result in chunk.get("results", []):
                if "error" in result:
                    raise RuntimeError(f"InfluxQL {q!r}: {result['error']}")
                for series in result.get("series", []):
                    cols = series["columns"]
                    rows.extend(dict(zip(cols, v, strict=True)) for v in series["values"])
        return rows

    def _count_v1(self, start_ms: int, end_ms: int, energy_field: str) -> SinkCounts:
        where = f"time >= {start_ms}ms AND time < {end_ms}ms"
        counts = SinkCounts()
        status = self._influxql(
            f'SELECT "requests", "latency_ms", "up" FROM "meter_status" WHERE {where}'
        )
        for row in status:
            t = int(row["time"])
            counts.status[t] = counts.status.get(t, 0) + 1
            counts.up[t] = counts.up.get(t, 0) + (1 if row["up"] else 0)
            counts.requests[t] = counts.requests.get(t, 0) + float(row["requests"] or 0)
            latency = float(row["latency_ms"] or 0)
            counts.latency_ms[t] = counts.latency_ms.get(t, 0) + latency
            counts.latencies.append(latency)
        energy = self._influxql(f'SELECT count("{energy_field}") FROM "energy" WHERE {where}')
        counts.energy_points = int(energy[0]["count"]) if energy else 0
        return counts

    def _export(self, match: str, start_ms: int, end_ms: int) -> list[dict[str, Any]]:
        body = urllib.parse.urlencode(
            {"match[]": match, "start": f"{start_ms / 1000:.3f}", "end": f"{end_ms / 1000:.3f}"}
        ).encode()
        return _http_json_stream(f"{self.url}/api/v1/export", data=body)

    def _count_v2(self, start_ms: int, end_ms: int, energy_field: str) -> SinkCounts:
        urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=30).read()
        counts = SinkCounts()
        last_ms = end_ms - 1  # export's end is inclusive
        per: dict[str, dict[tuple[str, int], float]] = {}
        for name in STATUS_FIELDS:
            values: dict[tuple[str, int], float] = {}
            for series in self._export(f"meter_status_{name}", start_ms, last_ms):
                key = series["metric"].get("meter_id", "")
                for t, v in zip(series["timestamps"], series["values"], strict=True):
                    values[(key, int(t))] = float(v)
            per[name] = values
        for (_meter, t), requests in per["requests"].items():
            counts.status[t] = counts.status.get(t, 0) + 1
            counts.requests[t] = counts.requests.get(t, 0) + requests
        for (_meter, t), up in per["up"].items():
            counts.up[t] = counts.up.get(t, 0) + (1 if up else 0)
        for (_meter, t), latency in per["latency_ms"].items():
            counts.latency_ms[t] = counts.latency_ms.get(t, 0) + latency
            counts.latencies.append(latency)
        for series in self._export(f"energy_{energy_field}", start_ms, last_ms):
            counts.energy_points += len(series["timestamps"])
        return counts

    def stop(self) -> None:
        self.service.stop()


def start_sink(api: str, folder: Path) -> Sink:
    from devservices import influx

    if api == "v1":
        return Sink(api, influx.start_influxdb_v1(folder / "influxdb"))
    return Sink(api, influx.start_victoriametrics(folder / "victoria-metrics"))


# --------------------------------------------------------------------------- baselines


def _my_meters(args: argparse.Namespace) -> dict[int, list[int]]:
    """{port: [unit ids]} of the meters this client process reads (its shard)."""
    placements = place(args.meters, port_per_meter=args.port_per_meter)
    by_port: dict[int, list[int]] = defaultdict(list)
    for p in placements:
        if p.index % args.shards == args.shard:
            by_port[args.base_port + p.slot].append(p.slave_address)
    return by_port


async def _ceiling_client(args: argparse.Namespace) -> dict[str, Any]:
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


def _naive_client(args: argparse.Namespace) -> dict[str, Any]:
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


# --------------------------------------------------------------------------- py-spy


def start_py_spy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(binary).exists():
        say("py-spy not installed (pip install py-spy); no profile taken")
        return None
    argv = [binary, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds)))]
    argv += ["--rate", "100", "--format", "raw", "--nonblocking", "-o", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


_FRAME = re.compile(r"(?P<func>.*) \((?P<file>[^()]*?):\d+\)$")
# Frames every sample passes through (the event loop, the entry point): no information.
_PLUMBING = re.compile(
    r"^(asyncio/|selectors\.py|emm/cli\.py|emm/service\.py|\w+/__main__\.py|emm$|<string>)"
)


def _frame_name(frame: str) -> str:
    """`function (module/file.py)` without line number and install prefix."""
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match["file"]
    root = str(ROOT) + "/"
    if path.startswith(root):
        path = path[len(root) :]
    for marker in ("site-packages/", "python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match['func']} ({path})"


def summarise_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Where a process spent its samples, from py-spy's collapsed stacks: the functions with
    most own samples, and the functions (outside the event loop) with most inclusive samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    try:
        text = path.read_text()
    except OSError:
        return {"error": f"no profile at {path}"}
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        n = int(count_text)
        total += n
        frames = [_frame_name(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for name in set(frames):
            file = name.rpartition("(")[2].rstrip(")")
            if not _PLUMBING.match(file):
                inclusive[name] += n
    if not total:
        return {"samples": 0}

    def pct(counter: Counter[str]) -> list[list[Any]]:
        return [[f, round(100 * n / total, 1)] for f, n in counter.most_common(top)]

    return {
        "samples": total,
        "file": str(path),
        "own_pct": pct(own),
        "inclusive_pct": pct(inclusive),
    }


# --------------------------------------------------------------------------- the run


def machine() -> dict[str, Any]:
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


def read_stats(path: Path) -> list[tuple[int, int, int]]:
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


def run(cfg: argparse.Namespace) -> dict[str, Any]:
    schedule = CronSchedule(cfg.cron)
    spec = MeterSpec.of_type(cfg.profile)
    limits = spec.profile.limits if spec.profile is not None else None
    planned = len(plan(spec.registers, limits))
    energy_field = spec.registers[0].name
    placements = place(cfg.meters, port_per_meter=cfg.port_per_meter)
    ports = port_count(placements)
    probe_ms = schedule.next_after(int(time.time() * 1000))
    period_ms = schedule.period_after(probe_ms)
    warmup_s = cfg.warmup_s if cfg.warmup_s is not None else max(period_ms / 1000, 2.0)

    folder = Path(tempfile.mkdtemp(prefix="emm-bench-"))
    procs = Processes(folder, cwd=ROOT)  # `-m bench.*` children need the checkout
    sampler = ProcSampler(interval_s=1.0)
    depths: DepthSampler | None = None
    sink: Sink | None = None
    result: dict[str, Any] = {}
    say(f"working in {folder}")
    try:
        with contextlib.ExitStack() as stack:
            sink = start_sink(cfg.api, folder)
            stack.callback(sink.stop)
            say(f"sink {cfg.api} at {sink.url}")
            dsn = stack.enter_context(fresh_database(cfg.postgres_dsn))
            amqp_url = stack.enter_context(private_vhost(cfg.amqp))
            say(f"database {dsn.rsplit('/', 1)[1]}, vhost {amqp_url.rsplit('/', 1)[1]}")
            stack.callback(procs.stop_all)
            stack.callback(sampler.stop)
            common = {"EMM_POSTGRES_DSN": dsn, "EMM_AMQP_URL": amqp_url, "EMM_LOG_LEVEL": "INFO"}

            migrate = subprocess.run(
                [*emm_command(), "migrate", "--no-seed"],
                env={**os.environ, **common},
                capture_output=True,
                text=True,
                timeout=120,
                cwd=ROOT,
            )
            if migrate.returncode != 0:
                raise RuntimeError(f"emm migrate failed: {migrate.stderr[-2000:]}")

            base_port = free_port_run(ports)
            sim_argv = [*emm_command(), "simulator", "--profile", cfg.profile]
            sim_argv += ["--meters", str(cfg.meters), "--host", "127.0.0.1"]
            sim_argv += [
                "--port",
                str(base_port),
                "--write-config",
                "--advertise-host",
                "127.0.0.1",
            ]
            if cfg.port_per_meter:
                sim_argv.append("--port-per-meter")
            if cfg.latency_ms:
                sim_argv += ["--latency-ms", str(cfg.latency_ms)]
            sim = procs.spawn(
                "simulator", sim_argv, {**common, "EMM_SIMULATOR_STEP_S": str(cfg.step_s)}
            )
            procs.wait_log("simulator", r"registered \d+ meter", 300)
            sampler.add("simulator", sim.pid)
            say(f"simulator: {cfg.meters} {cfg.profile} meters on {ports} port(s) from {base_port}")
            if cfg.interleave_gateways:
                interleave_gateways(dsn)

            stats_file = folder / "writer-stats.txt"
            writer_env = {
                **common,
                **sink.writer_env(),
                "EMM_WRITER_BATCH_SIZE": str(cfg.batch_size),
                "EMM_WRITER_STATS_FILE": str(stats_file),
            }
            if cfg.flush_interval_ms:
                writer_env["EMM_WRITER_FLUSH_INTERVAL_MS"] = str(cfg.flush_interval_ms)
            writer = procs.spawn("writer", [*emm_command(), "writer"], writer_env)
            worker_env = {**common, "EMM_WORKER_CONCURRENCY": str(cfg.concurrency)}
            worker_argv, worker_cwd = [*emm_command(), "worker"], ROOT
            if cfg.worker_from:
                # A/B: the workers run another checkout's code (`-m` puts the cwd first).
                worker_cwd = Path(cfg.worker_from).resolve()
                worker_env["PYTHONPATH"] = str(worker_cwd)
                worker_argv = [sys.executable, "-m", "emm", "worker"]
            probe_file = folder / "worker-probe.json"
            workers = []
            for k in range(cfg.workers):
                argv, env = worker_argv, worker_env
                if k == 0 and cfg.probe_worker:
                    argv = [sys.executable, "-m", "bench.workerprobe"]
                    env = {**worker_env, "EMM_BENCH_PROBE_FILE": str(probe_file)}
                workers.append(procs.spawn(f"worker-{k}", argv, env, worker_cwd))
            procs.wait_log("writer", "writer started", 60)
            for k in range(cfg.workers):
                procs.wait_log(f"worker-{k}", "worker started", 60)
            scheduler = procs.spawn(
                "scheduler", [*emm_command(), "scheduler"], {**common, "EMM_READ_CRON": cfg.cron}
            )
            procs.wait_log("scheduler", "scheduler started", 60)
            sampler.add("scheduler", scheduler.pid)
            for k, proc in enumerate(workers):
                sampler.add(f"worker-{k}", proc.pid)
            sampler.add("writer", writer.pid)
            sampler.add(
                f"sink ({cfg.api}: {Path(sink.service.proc.args[0]).name})", sink.service.proc.pid
            )
            rabbit = listener_pid(urllib.parse.urlsplit(cfg.amqp).port or 5672)
            if rabbit is not None:
                sampler.add("rabbitmq (shared)", rabbit)
            sampler.start()
            depths = DepthSampler(amqp_url)
            depths.start()
            stack.callback(depths.stop)

            now_ms = int(time.time() * 1000)
            first = schedule.next_after(now_ms + int(warmup_s * 1000) - 1)
            ticks = [first]
            while True:
                nxt = schedule.next_after(ticks[-1])
                if nxt >= first + cfg.duration_s * 1000:
                    break
                ticks.append(nxt)
            window_end = schedule.next_after(ticks[-1])
            window_s = (window_end - first) / 1000
            say(
                f"warm-up until {iso(first)}, then {len(ticks)} tick(s) over {window_s:g} s "
                f"to {iso(window_end)}"
            )
            time.sleep(max(0.0, first / 1000 - time.time()))
            sampler.mark("start")
            spies = {}
            for name in cfg.py_spy:
                track = sampler.tracks.get(name)
                if track is None:
                    say(f"--py-spy {name}: no such component ({', '.join(sampler.tracks)})")
                    continue
                out = folder / f"py-spy-{name}.txt"
                spy = start_py_spy(track.pid, window_s, out)
                if spy is not None:
                    spies[name] = (spy, out)

            procs.wait_log(
                "scheduler", re.escape(f"tick {iso(ticks[-1])}"), window_s + period_ms / 1000 + 60
            )
            time.sleep(0.2)
            procs.stop("scheduler")
            # Drain: the last tick's jobs expire at window_end; then the readings get written.
            drain_deadline = window_end / 1000 + max(15.0, period_ms / 1000)
            flush_s = (cfg.flush_interval_ms or 1000) / 1000
            while time.time() < drain_deadline:
                per_tick = latency_from_stats(read_stats(stats_file), ticks, cfg.meters)[1]
                done = all(per_tick.get(t, 0) >= cfg.meters for t in ticks)
                sample = depths.samples[-1] if depths.samples else None
                empty = sample is not None and sample[0] > time.time() - 2 and sample[1:] == (0, 0)
                if done and empty:
                    break
                if empty and time.time() > window_end / 1000 + 3:
                    # The rest of the window's jobs expired; let the writer flush what it holds.
                    time.sleep(flush_s + 1.0)
                    break
                time.sleep(0.5)
            sampler.mark("end")
            mark_end_wall = time.time()
            for name, (spy, _out) in spies.items():
                try:
                    spy.wait(window_s + 30)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    say(f"py-spy for {name} did not finish")
            peaks = {name: peak_rss_mb(track.pid) for name, track in sampler.tracks.items()}
            for k in range(cfg.workers):
                procs.stop(f"worker-{k}")
            procs.stop("writer")
            depths.stop()

            stats = read_stats(stats_file)
            latencies, per_tick_written, last_written = latency_from_stats(stats, ticks, cfg.meters)
            counts = sink.count(first, window_end, energy_field)
            say("pipeline stopped; counting done")

            ceiling = naive = None
            if cfg.ceiling_s > 0:
                say(f"ceiling: {cfg.workers} process(es) of async clients for {cfg.ceiling_s} s")
                sampler.mark("ceiling_start")
                ceiling = run_clients(
                    "--ceiling-client", cfg, base_port, cfg.workers, cfg.ceiling_s
                )
                sampler.mark("ceiling_end")
                sim_cpu = sampler.cpu_between("simulator", "ceiling_start", "ceiling_end")
                ceiling["simulator_cpu_s"] = round(sim_cpu, 2) if sim_cpu is not None else None
            if cfg.naive_s > 0:
                say(f"naive: one synchronous client, one register a request, {cfg.naive_s} s")
                naive = run_clients("--naive-client", cfg, base_port, 1, cfg.naive_s)
            sampler.stop()
            procs.stop("simulator")
            sim_log = procs.log("simulator")
            match = re.search(r"simulator stopped: (\d+) reads", sim_log)
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
                depths=depths,
                sampler=sampler,
                peaks=peaks,
                ceiling=ceiling,
                naive=naive,
                sim_reads=sim_reads,
                window_wall_s=mark_end_wall - first / 1000,
            )
            result["profiles"] = {
                name: summarise_profile(out) for name, (_spy, out) in spies.items()
            }
            if cfg.probe_worker:
                with contextlib.suppress(OSError, ValueError):
                    result["worker_probe"] = json.loads(probe_file.read_text())
            if cfg.keep or spies:
                result["folder"] = str(folder)
    finally:
        sampler.stop()
        procs.stop_all()
        if not (cfg.keep or cfg.py_spy):
            shutil.rmtree(folder, ignore_errors=True)
    return result


def _rate(x: float | None, digits: int = 1) -> float | None:
    return None if x is None else round(x, digits)


def report(cfg: argparse.Namespace, **m: Any) -> dict[str, Any]:
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
        print(json.dumps(asyncio.run(_ceiling_client(cfg))))
        return
    if cfg.naive_client:
        print(json.dumps(_naive_client(cfg)))
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
