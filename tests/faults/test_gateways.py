"""Gateways that accept one connection each, read by several workers: never a second connection,
nothing lost or doubled, as they are, while a fifth worker joins and while a worker is killed.

1,000 meters behind 5 simulator ports (200 unit ids each) that accept 1 connection at a time and
a 10 s cron (a 2 s cron, 500 readings a second, needs more CPU than a shared two-core machine
has: see the README's Performance). One pipeline goes through three phases, ten ticks in all:

- ticks 0-2: 4 workers;
- a fifth worker starts in tick 2; by the end of tick 4 (two ticks later) each of the five
  owns exactly one of the gateways' shards;
- a worker is SIGKILLed in the middle of tick 6's reads; before tick 7 its gateway has a new
  owner among the four left; ticks 7-9 are read by them.

Every phase's ticks are stored, exactly; the simulator counts every connection it refused and
the most open at once per port (`--stats-file`), over the whole run and so over every phase.
Which worker owns which shard is read from the workers' logs ("now owns shard", "handed over").
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from broker import shard_of
from devservices.influx import PrivateInfluxDB
from devservices.net import free_port_run
from devservices.processes import Processes
from devservices.rabbitmq import PrivateRabbitMQ
from tests.faults.harness import Pipeline, check, now_ms, owned_shards, wait_all_stored

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

METERS, PORTS, TICKS = 1000, 5, 10
JOIN_TICK, KILL_TICK = 2, 6


def distinct_shard_ports() -> int:
    """A first port of a run of free ports whose gateways hash to as many shards, so that each
    gateway is a shard of its own to hand over."""
    for _ in range(100):
        base = free_port_run(PORTS)
        if len({shard_of("127.0.0.1", port) for port in range(base, base + PORTS)}) == PORTS:
            return base
    raise RuntimeError("no run of free ports on distinct shards")


def busy_owned(pipeline: Pipeline, names: list[str], busy: set[int], at_ms: int) -> dict:
    """{worker: the gateways' shards its log says it owned at `at_ms`}."""
    return {name: owned_shards(pipeline.log(name), at_ms) & busy for name in names}


def assert_spread(owners: dict[str, set[int]], busy: set[int], most: int, when: str) -> None:
    """Every gateway's shard has exactly one owner among `owners`, none owns more than `most`."""
    owned = [k for shards in owners.values() for k in shards]
    assert sorted(owned) == sorted(busy), f"{when}: {owners}"
    assert max(len(shards) for shards in owners.values()) <= most, f"{when}: {owners}"


def test_gateways_keep_one_connection_as_workers_join_and_die(
    pg_dsn: str,
    rabbit: PrivateRabbitMQ,
    influx: PrivateInfluxDB,
    processes: Processes,
    tmp_path: Path,
) -> None:
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
        sim_port=distinct_shard_ports(),
    )
    busy = {shard_of("127.0.0.1", pipeline.sim_port + n) for n in range(PORTS)}
    first = pipeline.run()
    p_ms = pipeline.period_ms

    def tick(n: int) -> int:
        return first + n * p_ms

    def sleep_until(at_ms: int) -> None:
        time.sleep(max(0.0, (at_ms - now_ms()) / 1000))

    four = [f"worker{n}" for n in range(4)]
    sleep_until(tick(JOIN_TICK) + 500)
    pipeline.start("worker4")
    five = [*four, "worker4"]
    # in the middle of tick 6's reads, the worker that owns the most shards
    sleep_until(tick(KILL_TICK) + 100)
    victim = max(five, key=lambda name: len(owned_shards(pipeline.log(name), now_ms())))
    victims_gateways = busy_owned(pipeline, [victim], busy, now_ms())[victim]
    pipeline.kill(victim)
    left = [name for name in five if name != victim]

    last = tick(TICKS - 1)
    sleep_until(last)
    verdict = wait_all_stored(pipeline, influx, first, last, limit_s=30)
    time.sleep(1.0)  # a stats file written after the last reads
    stats = json.loads(stats_file.read_text())

    for phase, lo, hi in (
        ("4 workers", 0, JOIN_TICK),
        ("a fifth joins", JOIN_TICK + 1, KILL_TICK - 1),
        ("one killed", KILL_TICK, TICKS - 1),
    ):
        part = check(pipeline, influx, tick(lo), tick(hi))
        assert (part.lost, part.dup) == ([], []), f"{phase}: {part}"
    assert verdict.lost == [], str(verdict)
    assert verdict.dup == [], str(verdict)
    assert verdict.stored == METERS * TICKS
    assert stats["refused"] == 0, stats
    peaks = stats["peak_connections"]
    assert len(peaks) == PORTS and set(peaks.values()) == {1}, peaks

    # Spread: 5 gateways over 4 workers, at most 2 each (ceil 5/4); over 5, one each.
    assert_spread(busy_owned(pipeline, four, busy, tick(JOIN_TICK) - 1000), busy, 2, "4 workers")
    joined = busy_owned(pipeline, five, busy, tick(JOIN_TICK + 3) - 1000)
    assert_spread(joined, busy, 1, "two ticks after the fifth joined")
    assert len(joined["worker4"]) == 1, joined
    assert any("handed over" in pipeline.log(name) for name in four)
    # The killed worker's gateway went to one of the others within the tick.
    assert len(victims_gateways) == 1, (victim, victims_gateways)
    handed = busy_owned(pipeline, left, busy, tick(KILL_TICK + 1) - 1000)
    assert_spread(handed, busy, 2, "a tick after the kill")
