"""Gateways that accept one connection each, read by several workers: never a second connection,
nothing lost or doubled, also while a worker is killed or another joins.

1,000 meters behind 5 simulator ports (200 unit ids each) that accept 1 connection at a time,
4 workers, a 10 s cron, 10 ticks (a 2 s cron, 500 readings a second, needs more CPU than a
shared two-core machine has: see the README's Performance). The simulator counts every
connection it refused and the most open at once per port (`--stats-file`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from devservices.influx import PrivateInfluxDB
from devservices.processes import Processes
from devservices.rabbitmq import PrivateRabbitMQ
from tests.faults.harness import Pipeline, Verdict, now_ms, wait_all_stored

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

METERS, PORTS, TICKS = 1000, 5, 10


def run(
    pg_dsn: str,
    rabbit: PrivateRabbitMQ,
    influx: PrivateInfluxDB,
    processes: Processes,
    tmp_path: Path,
    during: Callable[[Pipeline, int], None] = lambda _pipeline, _first: None,
) -> tuple[Pipeline, Verdict, dict]:
    stats_file = tmp_path / "simulator-stats.json"
    pipeline = Pipeline(
        processes,
        pg_dsn,
        rabbit.url,
        influx.url,
        meters=METERS,
        period_s=10,
        workers=4,
        profile="virtual_modbustcp",
        simulator_args=[
            "--units-per-port",
            str(METERS // PORTS),
            "--max-connections",
            "1",
            "--stats-file",
            str(stats_file),
        ],
    )
    first = pipeline.run()
    during(pipeline, first)
    last = first + (TICKS - 1) * pipeline.period_ms
    time.sleep(max(0.0, (last - now_ms()) / 1000))
    verdict = wait_all_stored(pipeline, influx, first, last, limit_s=30)
    time.sleep(1.0)  # a stats file written after the last reads
    return pipeline, verdict, json.loads(stats_file.read_text())


def assert_gentle(pipeline: Pipeline, verdict: Verdict, stats: dict) -> None:
    assert verdict.lost == [], str(verdict)
    assert verdict.dup == [], str(verdict)
    assert verdict.stored == METERS * TICKS
    assert stats["refused"] == 0, stats
    peaks = stats["peak_connections"]
    assert len(peaks) == PORTS and set(peaks.values()) == {1}, peaks


def test_four_workers_one_connection_per_gateway(
    pg_dsn: str,
    rabbit: PrivateRabbitMQ,
    influx: PrivateInfluxDB,
    processes: Processes,
    tmp_path: Path,
) -> None:
    pipeline, verdict, stats = run(pg_dsn, rabbit, influx, processes, tmp_path)
    assert_gentle(pipeline, verdict, stats)


def test_a_worker_killed_hands_its_gateways_over(
    pg_dsn: str,
    rabbit: PrivateRabbitMQ,
    influx: PrivateInfluxDB,
    processes: Processes,
    tmp_path: Path,
) -> None:
    def kill_busiest(pipeline: Pipeline, first: int) -> None:
        # in the middle of the fourth tick's reads, the worker that owns the most
        at = first + 3 * pipeline.period_ms + 100
        time.sleep(max(0.0, (at - now_ms()) / 1000))
        names = [f"worker{n}" for n in range(pipeline.workers)]
        victim = max(names, key=lambda name: pipeline.log(name).count("now owns shard"))
        pipeline.kill(victim)

    pipeline, verdict, stats = run(pg_dsn, rabbit, influx, processes, tmp_path, kill_busiest)
    assert_gentle(pipeline, verdict, stats)


def test_a_fifth_worker_joins_and_gets_its_share(
    pg_dsn: str,
    rabbit: PrivateRabbitMQ,
    influx: PrivateInfluxDB,
    processes: Processes,
    tmp_path: Path,
) -> None:
    def join(pipeline: Pipeline, first: int) -> None:
        at = first + 2 * pipeline.period_ms + 500
        time.sleep(max(0.0, (at - now_ms()) / 1000))
        pipeline.start("worker4")

    pipeline, verdict, stats = run(pg_dsn, rabbit, influx, processes, tmp_path, join)
    assert_gentle(pipeline, verdict, stats)
    # shards were handed to the newcomer (64 shards, 5 workers: 12 or 13 each)
    assert "now owns shard" in pipeline.log("worker4")
    assert any("handed over" in pipeline.log(f"worker{n}") for n in range(4))
