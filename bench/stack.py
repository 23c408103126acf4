"""The stack a run measures, on loopback and private to the run: the sink, a fresh database, a
RabbitMQ vhost (all from `devservices`), the simulator, the writer, the workers and the
scheduler as processes, with their CPU and memory sampled."""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from types import TracebackType

from bench import ROOT
from bench.depths import DepthSampler
from bench.procstats import ProcSampler, listener_pid
from bench.report import latency_from_stats, read_stats, say
from bench.sinks import Sink, start_sink
from devservices.net import free_port_run
from devservices.postgres import fresh_database
from devservices.processes import Processes, emm_command
from devservices.rabbitmq import private_vhost


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


class Stack:
    """Everything one run starts in `folder`; a context manager that stops it all on exit."""

    def __init__(self, cfg: argparse.Namespace, folder: Path, sampler: ProcSampler) -> None:
        self.cfg = cfg
        self.folder = folder
        self.sampler = sampler
        self.procs = Processes(folder, cwd=ROOT)  # `-m bench.*` children need the checkout
        self.stats_file = folder / "writer-stats.txt"
        self.probe_file = folder / "worker-probe.json"
        self.simulator_stats = folder / "simulator-stats.json"
        self.base_port = 0
        self.sink: Sink | None = None
        self.depths: DepthSampler | None = None
        self._exit = contextlib.ExitStack()

    def __enter__(self) -> Stack:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit.close()

    def start(self, ports: int) -> None:
        """Start the sink, database, vhost, simulator (on `ports` ports), writer, workers and
        scheduler, then the samplers."""
        cfg, procs, sampler = self.cfg, self.procs, self.sampler
        sink = self.sink = start_sink(cfg.api, self.folder)
        self._exit.callback(sink.stop)
        say(f"sink {cfg.api} at {sink.url}")
        dsn = self._exit.enter_context(fresh_database(cfg.postgres_dsn, prefix="emm_bench"))
        amqp_url = self._exit.enter_context(private_vhost(cfg.amqp, prefix="emm-bench"))
        say(f"database {dsn.rsplit('/', 1)[1]}, vhost {amqp_url.rsplit('/', 1)[1]}")
        self._exit.callback(procs.stop_all)
        self._exit.callback(sampler.stop)
        common = {"EMM_POSTGRES_DSN": dsn, "EMM_AMQP_URL": amqp_url, "EMM_LOG_LEVEL": "INFO"}
        self._migrate(common)
        self._start_simulator(common, ports)
        if cfg.interleave_gateways:
            interleave_gateways(dsn)
        self._start_services(common, sink)
        rabbit = listener_pid(urllib.parse.urlsplit(cfg.amqp).port or 5672)
        if rabbit is not None:
            sampler.add("rabbitmq (shared)", rabbit)
        sampler.start()
        depths = self.depths = DepthSampler(amqp_url)
        depths.start()
        self._exit.callback(depths.stop)

    def _migrate(self, common: dict[str, str]) -> None:
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

    def _start_simulator(self, common: dict[str, str], ports: int) -> None:
        cfg = self.cfg
        self.base_port = base_port = free_port_run(ports)
        sim_argv = [*emm_command(), "simulator", "--profile", cfg.profile]
        sim_argv += ["--meters", str(cfg.meters), "--host", "127.0.0.1"]
        sim_argv += ["--port", str(base_port), "--write-config", "--advertise-host", "127.0.0.1"]
        if cfg.port_per_meter:
            sim_argv.append("--port-per-meter")
        if cfg.latency_ms:
            sim_argv += ["--latency-ms", str(cfg.latency_ms)]
        if cfg.max_connections:
            sim_argv += ["--max-connections", str(cfg.max_connections)]
        sim_argv += ["--stats-file", str(self.simulator_stats)]
        sim = self.procs.spawn(
            "simulator", sim_argv, {**common, "EMM_SIMULATOR_STEP_S": str(cfg.step_s)}
        )
        self.procs.wait_log("simulator", r"registered \d+ meter", 300)
        self.sampler.add("simulator", sim.pid)
        say(f"simulator: {cfg.meters} {cfg.profile} meters on {ports} port(s) from {base_port}")

    def _start_services(self, common: dict[str, str], sink: Sink) -> None:
        """The writer and the workers, then the scheduler once they are ready."""
        cfg, procs, sampler = self.cfg, self.procs, self.sampler
        writer_env = {
            **common,
            **sink.writer_env(),
            "EMM_WRITER_BATCH_SIZE": str(cfg.batch_size),
            "EMM_WRITER_STATS_FILE": str(self.stats_file),
        }
        if cfg.flush_interval_ms:
            writer_env["EMM_WRITER_FLUSH_INTERVAL_MS"] = str(cfg.flush_interval_ms)
        writer = procs.spawn("writer", [*emm_command(), "writer"], writer_env)
        worker_env = {**common, "EMM_WORKER_CONCURRENCY": str(cfg.concurrency)}
        worker_cwd = ROOT
        if cfg.worker_from:
            # A/B: the workers run another checkout's code (it comes first on the path).
            worker_cwd = Path(cfg.worker_from).resolve()
            worker_env["PYTHONPATH"] = str(worker_cwd)
        workers = []
        for k in range(cfg.workers):
            argv, env = [*emm_command(), "worker"], worker_env
            if k == 0 and cfg.probe_worker:
                argv = [sys.executable, "-m", "bench.workerprobe"]
                env = {**worker_env, "EMM_BENCH_PROBE_FILE": str(self.probe_file)}
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
        sampler.add(f"sink ({cfg.api}: {sink.service.binary.name})", sink.service.proc.pid)

    def drain(self, ticks: list[int], window_end: int, period_ms: int) -> None:
        """Wait (the scheduler stopped) until the window's readings are written or expired."""
        cfg = self.cfg
        assert self.depths is not None
        samples = self.depths.samples
        # The last tick's jobs expire at window_end; then the readings get written.
        drain_deadline = window_end / 1000 + max(15.0, period_ms / 1000)
        flush_s = (cfg.flush_interval_ms or 1000) / 1000
        while time.time() < drain_deadline:
            per_tick = latency_from_stats(read_stats(self.stats_file), ticks, cfg.meters)[1]
            done = all(per_tick.get(t, 0) >= cfg.meters for t in ticks)
            sample = samples[-1] if samples else None
            empty = sample is not None and sample[0] > time.time() - 2 and sample[1:] == (0, 0)
            if done and empty:
                break
            if empty and time.time() > window_end / 1000 + 3:
                # The rest of the window's jobs expired; let the writer flush what it holds.
                time.sleep(flush_s + 1.0)
                break
            time.sleep(0.5)

    def stop_pipeline(self) -> None:
        """Stop the workers, the writer and the depth sampler (the simulator keeps running)."""
        for k in range(self.cfg.workers):
            self.procs.stop(f"worker-{k}")
        self.procs.stop("writer")
        if self.depths is not None:
            self.depths.stop()
