"""Sharding the jobs by gateway: the shard of a gateway, the fair share, which shards to release,
the marker, and a model of single-active-consumer lines that converges as workers come and go."""

from __future__ import annotations

import itertools
import math
import random

import msgspec
import pytest

from broker.topology import (
    JOB_QUEUES,
    SHARDS,
    dead_letter_queue,
    job_queue,
    shard_of,
    work_queue_arguments,
)
from emm.errors import MessageError
from emm.messages import MARKER_VERSION, TickMarker
from worker.shards import fair_share, to_release

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    ("host", "port", "shard"),
    [
        # zlib.crc32("host:port") % 64: the same in every process, version and machine
        ("10.0.0.7", 502, 2),
        ("192.168.1.20", 502, 3),
        ("127.0.0.1", 1502, 45),
        ("127.0.0.1", 1503, 59),
    ],
)
def test_a_gateway_has_one_stable_shard(host: str, port: int, shard: int) -> None:
    assert shard_of(host, port) == shard


def test_gateways_spread_over_the_shards() -> None:
    counts = [0] * SHARDS
    for i in range(SHARDS * 100):
        counts[shard_of(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 502)] += 1
    assert min(counts) > 60 and max(counts) < 140


def test_shard_queues_dead_letter_to_one_queue_and_have_a_single_active_consumer() -> None:
    assert len(JOB_QUEUES) == SHARDS and JOB_QUEUES[5] == job_queue(5) == "emm.jobs.5"
    for queue in (job_queue(0), job_queue(SHARDS - 1)):
        assert dead_letter_queue(queue) == "emm.jobs.dead"
        assert work_queue_arguments(queue) == {
            "x-dead-letter-exchange": "emm.dead",
            "x-dead-letter-routing-key": "emm.jobs.dead",
            "x-max-length": 1_000_000,
            "x-max-length-bytes": 2 << 30,
            "x-overflow": "reject-publish",
            "x-single-active-consumer": True,
        }
    assert dead_letter_queue("emm.readings") == "emm.readings.dead"
    assert "x-single-active-consumer" not in work_queue_arguments("emm.readings")


@pytest.mark.parametrize(
    ("total", "workers", "share"),
    [
        (64, 1, 64),
        (64, 4, 16),
        (64, 5, 13),
        (64, 16, 4),
        (5, 4, 2),
        (5, 5, 1),
        (0, 3, 0),
        (7, 0, 7),
    ],
)
def test_fair_share_rounds_up(total: int, workers: int, share: int) -> None:
    assert fair_share(total, workers) == share


@pytest.mark.parametrize(
    ("owned", "busy", "busy_total", "workers", "shards", "release"),
    [
        # within the share: nothing
        ([1, 2, 3, 4], {1}, 4, 4, 16, []),
        # too many busy shards: the newest busy ones go
        ([1, 2, 3, 4], {1, 2, 3}, 4, 4, 16, [3, 2]),
        # too many shards: the newest idle ones go, busy ones stay
        ([1, 2, 3, 4, 5, 6], {6}, 1, 2, 8, [5, 4]),
        # both: the busy rule first, then the total counts what is left
        ([1, 2, 3, 4, 5, 6], {5, 6}, 2, 2, 8, [6, 4]),
        # no marker seen yet: busy shards are not counted
        ([1, 2, 3], {1, 2, 3}, None, 3, 9, []),
        # alone: keeps everything
        (list(range(8)), set(range(8)), 8, 1, 8, []),
    ],
)
def test_which_shards_to_release(
    owned: list[int],
    busy: set[int],
    busy_total: int | None,
    workers: int,
    shards: int,
    release: list[int],
) -> None:
    assert to_release(owned, busy, busy_total, workers, shards) == release


def test_a_marker_round_trips_and_is_told_apart_from_a_job() -> None:
    marker = TickMarker(MARKER_VERSION, 1_700_000_000_000, 12, 5)
    body = marker.encode()
    assert TickMarker.matches(body)
    assert TickMarker.decode(body) == marker
    assert msgspec.json.decode(body)["kind"] == "marker"
    assert not TickMarker.matches(b'{"v":3,"kind":"job","meter":{}}')
    with pytest.raises(MessageError, match="schema version 9"):
        TickMarker.decode(body.replace(b'"v":1', b'"v":9'))
    with pytest.raises(MessageError, match="marker is malformed"):
        TickMarker.decode(b'{"kind":"marker","v":1}')


class Lines:
    """RabbitMQ's single active consumer, modelled: per shard a line of workers, the first
    active; a worker that cancels leaves the line (the next becomes active), and one that
    consumes again joins its back."""

    def __init__(self, shards: int) -> None:
        self.shards = shards
        self.lines: list[list[str]] = [[] for _ in range(shards)]
        self.acquired: dict[tuple[str, int], int] = {}
        self._order = itertools.count()

    def join(self, worker: str) -> None:
        for k, line in enumerate(self.lines):
            line.append(worker)
            if len(line) == 1:
                self.acquired[(worker, k)] = next(self._order)

    def leave(self, worker: str) -> None:
        for k in range(self.shards):
            self._cancel(worker, k)
            self.lines[k].remove(worker)

    def _cancel(self, worker: str, k: int) -> None:
        line = self.lines[k]
        if line[0] == worker and len(line) > 1:
            self.acquired[(line[1], k)] = next(self._order)

    def release(self, worker: str, k: int) -> None:
        self._cancel(worker, k)
        self.lines[k].remove(worker)
        self.lines[k].append(worker)
        if len(self.lines[k]) == 1:
            self.acquired[(worker, k)] = next(self._order)

    def owned(self, worker: str) -> list[int]:
        mine = [k for k, line in enumerate(self.lines) if line and line[0] == worker]
        return sorted(mine, key=lambda k: self.acquired[(worker, k)])

    def workers(self) -> list[str]:
        return list(self.lines[0])


def tick(lines: Lines, busy: set[int]) -> None:
    """One tick: every worker checks its share; a shard passed on is checked at once by the
    worker it reaches (the hot potato), until it rests."""
    w = len(lines.workers())
    for worker in lines.workers():
        for k in to_release(lines.owned(worker), busy, len(busy), w, lines.shards):
            lines.release(worker, k)
    for _ in range(w * lines.shards):  # the hand-overs within the tick
        moved = False
        for worker in lines.workers():
            newest = lines.owned(worker)[-1:]
            if newest and newest[0] in to_release(
                lines.owned(worker), busy, len(busy), w, lines.shards
            ):
                lines.release(worker, newest[0])
                moved = True
        if not moved:
            return


def balanced(lines: Lines, busy: set[int]) -> bool:
    w = len(lines.workers())
    for worker in lines.workers():
        owned = lines.owned(worker)
        if len(owned) > fair_share(lines.shards, w):
            return False
        if len([k for k in owned if k in busy]) > fair_share(len(busy), w):
            return False
    return sum(len(lines.owned(x)) for x in lines.workers()) == lines.shards


@pytest.mark.parametrize("seed", range(20))
def test_the_model_converges_within_two_ticks_of_a_worker_joining_or_leaving(seed: int) -> None:
    rng = random.Random(seed)
    busy = set(rng.sample(range(SHARDS), rng.randint(1, 30)))
    lines = Lines(SHARDS)
    names = [f"w{i}" for i in range(rng.randint(1, 12))]
    for name in names:
        lines.join(name)
    for _ in range(3):
        tick(lines, busy)
    assert balanced(lines, busy)
    newcomer = "new"
    lines.join(newcomer)
    tick(lines, busy)
    tick(lines, busy)
    assert balanced(lines, busy)
    if len(lines.workers()) > 1:
        lines.leave(rng.choice(lines.workers()))
        tick(lines, busy)
        tick(lines, busy)
        assert balanced(lines, busy)
    gateways_per_worker = [len([k for k in lines.owned(x) if k in busy]) for x in lines.workers()]
    assert max(gateways_per_worker) <= math.ceil(len(busy) / len(lines.workers()))
