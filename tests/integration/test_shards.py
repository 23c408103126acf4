"""Workers sharing the shards of the jobs on a real RabbitMQ: each shard owned by one worker, the
fair share reached within two ticks of a worker joining or leaving, markers only (no devices)."""

from __future__ import annotations

import asyncio
import time

import pytest

from broker import JOBS, SHARDS, Broker, job_queue
from emm.messages import MARKER_VERSION, TickMarker
from emm.settings import WorkerSettings
from worker.app import Worker
from worker.shards import fair_share

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

PERIOD_S = 1.0
BUSY = {3, 17, 29, 41, 60}  # the shards that have gateways


async def publish_tick(broker: Broker, tick_ms: int) -> None:
    """One tick's markers, as the scheduler sends them."""
    for k in range(SHARDS):
        marker = TickMarker(MARKER_VERSION, tick_ms, 200 if k in BUSY else 0, len(BUSY))
        await broker.publish(job_queue(k), marker.encode(), exchange=JOBS, expiration_s=PERIOD_S)


def shares(workers: list[Worker]) -> list[tuple[int, int]]:
    """(shards, busy shards) owned by each worker."""
    return [(len(w.shards.owned()), len(BUSY.intersection(w.shards.owned()))) for w in workers]


def assert_balanced(workers: list[Worker]) -> None:
    owned = [set(w.shards.owned()) for w in workers]
    every = set().union(*owned)
    missing = set(range(SHARDS)) - every
    states = {
        k: [
            (w.shards.shards[k].state.value, w.shards.shards[k].consumed, w.shards.workers)
            for w in workers
        ]
        for k in missing
    }
    assert not missing, f"not owned: {states}"
    assert sum(len(o) for o in owned) == SHARDS, "a shard owned twice"
    n = len(workers)
    for total, busy in shares(workers):
        assert total <= fair_share(SHARDS, n), shares(workers)
        assert busy <= fair_share(len(BUSY), n), shares(workers)


def test_workers_share_the_shards_and_rebalance_within_two_ticks(amqp_url: str) -> None:
    settings = WorkerSettings(amqp_url=amqp_url, concurrency=64)

    async def scenario() -> None:
        scheduler = Broker(amqp_url, name="test-scheduler")
        await scheduler.connect(retry_forever=False)
        stops = [asyncio.Event() for _ in range(5)]
        workers = [Worker(settings) for _ in range(5)]
        tasks: list[asyncio.Task[None]] = []
        tick_ms = int(time.time() * 1000)

        async def ticks(n: int) -> None:
            nonlocal tick_ms
            for _ in range(n):
                tick_ms += int(PERIOD_S * 1000)
                await publish_tick(scheduler, tick_ms)
                await asyncio.sleep(PERIOD_S)

        try:
            for w, stop in zip(workers[:4], stops, strict=False):
                tasks.append(asyncio.create_task(w.run(stop)))
            await asyncio.sleep(1.0)
            await ticks(3)
            assert_balanced(workers[:4])

            # a fifth joins: balanced again within two ticks
            tasks.append(asyncio.create_task(workers[4].run(stops[4])))
            await asyncio.sleep(0.5)
            await ticks(2)
            assert_balanced(workers)
            assert any(w.shards.released for w in workers[:4])
            assert workers[4].shards.owned()

            # one leaves: its shards go to the others at once, balanced within two ticks
            stops[0].set()
            await asyncio.wait_for(tasks[0], 20)
            await ticks(2)
            assert_balanced(workers[1:])
        finally:
            for stop in stops:
                stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
            await scheduler.close()

    asyncio.run(scenario())
