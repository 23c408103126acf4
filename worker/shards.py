"""Which shards of the jobs this worker owns, and handing shards over so that two workers never
talk to one gateway at once.

Every worker consumes every shard queue (`emm.jobs.<k>`, see `broker.topology`); each is declared
with single active consumer, so RabbitMQ delivers a shard to one worker at a time: its owner. A
worker learns what it owns from deliveries, as any delivery of a shard (a job, or the marker the
scheduler sends every shard every tick) reaches its owner only.

Balance: after each tick's markers a worker counts the consumers of its shards (W: every worker
consumes every shard) and releases what exceeds its fair share (`to_release`). A shard it
acquires beyond its share it passes on at once, so a released shard travels down the line of
waiting consumers to a worker with room, within the tick.

Release (`Shards._release`), in this order so that the next owner never overlaps: hold the
shard's new deliveries; let its jobs in flight finish (read, confirmed, acked); close its
gateways' connections and forget their devices; cancel the consumer (RabbitMQ activates the next
in line at once); consume again (at the back of the line); requeue the held deliveries (they go
to the new owner) and send it a marker, so it knows at once rather than at the next tick.

Reconnection: a worker that lost RabbitMQ reads its meters on its own (`worker.replay`) until it
is back. Once back it consumes the shards it owned before at once and the others only
`RECLAIM_S` later, time enough for every living worker to reconnect: a shard returns to its
owner, whose reads on its own go on over the same connections, and goes to another worker only
when its owner did not come back in time. A worker that finds it did not get a shard back (no
delivery by the first tick's markers, or by `RECLAIM_S`) stops its reads there and forgets it.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import time
from collections.abc import Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from broker import JOBS, MARKERS, SHARDS, Broker, Delivery, ack, job_queue, nack, shard_of
from emm import retry
from emm.errors import BrokerError, MessageError
from emm.messages import MARKER_VERSION, TickMarker
from worker.consumer import Consumer
from worker.device import Devices, GatewayAddress
from worker.replay import Replay

log = logging.getLogger(__name__)

# After a tick's first marker, the others of that tick have arrived too (they are published
# together, ahead of the tick's jobs).
SETTLE_S = 0.3
# How long after reconnecting a worker waits before it consumes the shards it did not own:
# the longest another living worker waits between attempts to reconnect, and time to connect.
RECLAIM_S = retry.BROKER_RECONNECT.max_s + 3.0
# After closing a released shard's connections, before the next owner may open its own: time
# for the gateway to see them closed (a loaded gateway, or simulator, handles the close later).
CLOSE_PAUSE_S = 0.05
# How long the marker a released shard is handed over with may wait for its new owner.
HANDOVER_MARKER_TTL_S = 60.0
# Consumer counts looked at per check: any owned shard's count is W; a few cover a worker
# that is releasing or re-consuming one of them just then.
COUNTED = 3


def fair_share(total: int, workers: int) -> int:
    """The most of `total` shards one of `workers` workers may own: ceil(total / workers)."""
    return -(-total // max(workers, 1))


def to_release(
    owned: Sequence[int],
    busy: Collection[int],
    busy_total: int | None,
    workers: int,
    shards: int = SHARDS,
) -> list[int]:
    """The shards to release from `owned` (oldest acquired first), newest first.

    Busy shards (those with jobs) count first: at most `fair_share(busy_total, workers)` of
    them, which spreads the gateways; then all shards: at most `fair_share(shards, workers)`,
    releasing idle ones, so that a gateway added later lands anywhere. The newest go first:
    the oldest keep their learned state. `busy_total` None (no marker seen): busy shards are
    not counted.
    """
    release: list[int] = []
    owned_busy = [k for k in owned if k in busy]
    if busy_total is not None:
        extra = len(owned_busy) - fair_share(busy_total, workers)
        if extra > 0:
            release = owned_busy[::-1][:extra]
    kept = [k for k in owned if k not in release]
    extra = len(kept) - fair_share(shards, workers)
    if extra > 0:
        release += [k for k in kept[::-1] if k not in busy][:extra]
    return release


class State(enum.Enum):
    WAITING = "waiting"  # consumed (or about to be), not delivered to us
    DECIDING = "deciding"  # just delivered to us: keep or pass on?
    OWNED = "owned"
    RELEASING = "releasing"


@dataclass(eq=False)
class Shard:
    """This worker's view of one shard queue."""

    index: int
    state: State = State.WAITING
    generation: int = 0  # of the consumer; a delivery to an older one goes back
    consumed: bool = False  # a consumer of ours is on the queue (active or waiting)
    acquired: int = 0  # when it became ours (a counter: higher is newer)
    busy: bool = False  # has jobs this tick
    held: list[Delivery] = field(default_factory=list)
    in_flight: set[asyncio.Task[object]] = field(default_factory=set)

    @property
    def queue(self) -> str:
        return job_queue(self.index)

    def has(self, gateway: GatewayAddress) -> bool:
        return shard_of(*gateway) == self.index


class Shards:
    """The shards of one worker: consumes them all, runs the jobs of those it owns, keeps its
    fair share and hands the rest over."""

    def __init__(
        self,
        broker: Broker,
        consumer: Consumer,
        devices: Devices,
        replay: Replay,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.broker = broker
        self.consumer = consumer
        self.devices = devices
        self.replay = replay
        self.clock = clock
        self.shards = [Shard(k) for k in range(SHARDS)]
        self.workers = 1  # W, as last counted
        self.busy_total: int | None = None  # busy shards at the latest tick, from its markers
        self.released = 0  # shards handed over by this worker
        self._tick_ms = 0  # the newest tick a marker came for
        self._order = itertools.count(1)
        # owned before the connection was lost, until settled after reconnecting
        self._previous: set[int] = set()
        self._connected_before = False
        self._closing = False
        self._draining = False  # at SIGTERM, while the jobs of the shards owned finish
        self._tasks: set[asyncio.Task[Any]] = set()

    def owned(self) -> list[int]:
        """The shards this worker owns, oldest acquired first."""
        mine = [s for s in self.shards if s.state is State.OWNED]
        return [s.index for s in sorted(mine, key=lambda s: s.acquired)]

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("shard housekeeping failed", exc_info=task.exception())

    # connection

    async def on_connect(self) -> None:
        """Consume the shards (a connect callback of the broker): after a reconnection the
        ones owned before at once, the others `RECLAIM_S` later."""
        self._reset()  # a new connection: no consumer of ours is on any queue
        first = self.shards
        if self._connected_before:
            first = [s for s in self.shards if s.index in self._previous]
            log.info(
                "reconnected: consuming the %d shard(s) this worker owned first, the others "
                "in %.0f s",
                len(first),
                RECLAIM_S,
            )
            self._spawn(self._reclaim())
        for shard in first:
            await self._consume(shard)
        self._connected_before = True
        await self._count_workers([s.index for s in first])

    def on_disconnect(self) -> None:
        """The connection is gone, and with it every consumer (a disconnect callback)."""
        for task in list(self._tasks):
            task.cancel()
        self._reset()

    def _reset(self) -> None:
        """Every shard waiting, not consumed; the ones owned until now remembered."""
        for shard in self.shards:
            if shard.state is not State.WAITING:
                self._previous.add(shard.index)
            shard.state = State.WAITING
            shard.consumed = False
            shard.generation += 1
            shard.held.clear()  # RabbitMQ requeues them with the channel

    async def _consume(self, shard: Shard) -> None:
        handler = partial(self._on_delivery, shard, shard.generation)
        await self.broker.consume(shard.queue, handler, resume=False)
        shard.consumed = True

    async def _reclaim(self) -> None:
        await asyncio.sleep(RECLAIM_S)
        self._settle_previous()
        for shard in self.shards:
            if not shard.consumed:
                await self._consume(shard)

    def _settle_previous(self) -> None:
        """Forget the shards owned before the reconnection that did not come back."""
        lost = {k for k in self._previous if self.shards[k].state is State.WAITING}
        self._previous.clear()
        if lost:
            log.info("%d shard(s) went to other workers while RabbitMQ was away", len(lost))
            self._forget(lambda gateway: shard_of(*gateway) in lost)
            # reads started on its own while RabbitMQ was away, at gateways others own now
            self.consumer.cancel_reads(lambda gateway: shard_of(*gateway) in lost)

    def _forget(self, gateways: Callable[[GatewayAddress], bool]) -> None:
        self.devices.drop(gateways)
        self.replay.forget(gateways)

    # deliveries

    async def _on_delivery(self, shard: Shard, generation: int, delivery: Delivery) -> None:
        if self._closing:
            if (
                self._draining
                and shard.state is State.OWNED
                and generation == shard.generation
                and not TickMarker.matches(delivery.body)
            ):
                self._take(shard, delivery)  # a job of a gateway still ours: read it
                return
            # given back once this worker no longer consumes the queue (were it given back
            # now, RabbitMQ would deliver it to this same consumer again)
            shard.held.append(delivery)
            return
        if generation != shard.generation:
            # to a consumer cancelled meanwhile: back to the queue, for the shard's owner
            await nack(delivery, requeue=True)
        elif shard.state is State.OWNED:
            self._take(shard, delivery)
        else:
            shard.held.append(delivery)
            if shard.state is State.WAITING:
                shard.state = State.DECIDING
                self._spawn(self._acquire(shard))

    def _take(self, shard: Shard, delivery: Delivery) -> None:
        """Run a job of an owned shard, or note its marker."""
        if TickMarker.matches(delivery.body):
            self._spawn(self._marker(shard, delivery))
            return
        if delivery.exchange == MARKERS:
            # workers may publish through emm.markers; a job from there is forged
            forged = MessageError(f"a job published through {MARKERS}, not {JOBS}", delivery.body)
            self._spawn(self.broker.settle(shard.queue, delivery, forged))
            return
        shard.busy = True
        task = self.consumer.start(shard.queue, delivery)
        shard.in_flight.add(task)
        task.add_done_callback(shard.in_flight.discard)

    async def _marker(self, shard: Shard, delivery: Delivery) -> None:
        try:
            marker = TickMarker.decode(delivery.body)
        except MessageError as exc:
            await self.broker.settle(shard.queue, delivery, exc)
            return
        await ack(delivery)
        shard.busy = marker.jobs > 0
        if marker.tick_ms >= self._tick_ms:
            self.busy_total = marker.busy_shards
        if marker.tick_ms > self._tick_ms:
            self._tick_ms = marker.tick_ms
            self._spawn(self._after_markers())

    async def _acquire(self, shard: Shard) -> None:
        """A shard was just delivered to us: keep it, or pass it on at once when it would take
        this worker past its fair share."""
        await self._count_workers([shard.index, *self.owned()])
        if shard.state is not State.DECIDING:
            return  # the connection went meanwhile
        shard.state = State.OWNED
        shard.acquired = next(self._order)
        marker = _peek_marker(shard.held[0].body)
        shard.busy = marker is None or marker.jobs > 0
        if marker is not None and marker.tick_ms >= self._tick_ms:
            self.busy_total = marker.busy_shards
        release = to_release(self.owned(), self._busy(), self.busy_total, self.workers)
        for k in release:
            if k != shard.index and self.shards[k].state is State.OWNED:
                self._spawn(self._release(self.shards[k]))
        if shard.index in release:
            await self._release(shard)
            return
        log.info("now owns shard %d (%d owned)", shard.index, len(self.owned()))
        held, shard.held = shard.held, []
        for delivery in held:
            self._take(shard, delivery)

    # balance

    def _busy(self) -> set[int]:
        return {s.index for s in self.shards if s.busy}

    async def _count_workers(self, shards: list[int]) -> None:
        """Count W: the consumers of (a few of) `shards`, as every worker consumes each."""
        if not shards:
            return
        try:
            counts = [await self.broker.consumer_count(job_queue(k)) for k in shards[:COUNTED]]
        except BrokerError as exc:
            log.debug("cannot count the workers: %s", exc)
            return
        self.workers = max(counts, default=1) or 1

    async def _after_markers(self) -> None:
        """Once a tick's markers are in: settle a reconnection, release what exceeds the fair
        share."""
        await asyncio.sleep(SETTLE_S)
        if self._previous:
            self._settle_previous()
        owned = self.owned()
        if not owned:
            return
        await self._count_workers(owned)
        for k in to_release(owned, self._busy(), self.busy_total, self.workers):
            shard = self.shards[k]
            if shard.state is State.OWNED:
                self._spawn(self._release(shard))

    async def _release(self, shard: Shard) -> None:
        """Hand `shard` over to the next worker in its line (see the module's docstring)."""
        shard.state = State.RELEASING
        try:
            if shard.in_flight:
                await asyncio.wait(shard.in_flight)
            # what still reads there are reads on its own from an outage just over
            self.consumer.cancel_reads(shard.has)
            self._forget(shard.has)
            await asyncio.sleep(CLOSE_PAUSE_S)
            await self.broker.cancel(shard.queue)
            held, shard.held = shard.held, []  # none come after the cancel's answer
            busy, shard.busy = shard.busy, False
            shard.consumed = False
            shard.generation += 1
            shard.state = State.WAITING
            # back in line before anything else, so that the next owner counts this worker
            await self._consume(shard)
            for delivery in held:
                await nack(delivery, requeue=True)
            await self._announce(shard, busy)
        except BrokerError as exc:
            log.debug("shard %d not handed over: %s", shard.index, exc)
            return  # the connection went: it is handed over by RabbitMQ
        self.released += 1
        log.info(
            "shard %d handed over (%d owned, %d workers, %s busy shards)",
            shard.index,
            len(self.owned()),
            self.workers,
            self.busy_total,
        )

    async def _announce(self, shard: Shard, busy: bool) -> None:
        """Send the shard's new owner a marker, so that it knows it owns the shard (and passes it
        on if it has its share) now rather than at the next tick."""
        if self.busy_total is None:
            return  # nothing to tell; the next tick's marker will
        marker = TickMarker(MARKER_VERSION, self._tick_ms, int(busy), self.busy_total)
        await self.broker.publish(
            shard.queue, marker.encode(), exchange=MARKERS, expiration_s=HANDOVER_MARKER_TTL_S
        )

    async def close(self) -> None:
        """Start no more jobs and stop the housekeeping (at shutdown)."""
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)

    async def drain(self, timeout_s: float) -> tuple[int, int]:
        """Stop consuming and hand every shard over, as a rolling update needs (at SIGTERM):
        the jobs in flight, and those of its shards delivered meanwhile, get `timeout_s` to be
        read and their readings confirmed; those still unfinished then are requeued. The
        devices' connections close before the consumers go, so the shards' next owners never
        find them open. Returns (jobs finished, jobs requeued)."""
        deadline = time.monotonic() + timeout_s
        self._draining = True
        await self.close()
        # not ours: nothing in flight, the next in line may have them now (at once: a cancel
        # is a round trip each)
        others = [s for s in self.shards if s.state is not State.OWNED]
        await asyncio.gather(*(self._stop_consuming(s) for s in others))
        # the jobs already on their way to this worker are read too: the gateway is still ours
        seen: set[asyncio.Task[object]] = set()
        while (left_s := deadline - time.monotonic()) > 0:
            in_flight = set().union(*(s.in_flight for s in self.shards))
            seen |= in_flight
            if not in_flight:
                break
            await asyncio.wait(in_flight, timeout=left_s)
        self._draining = False
        unfinished = [task for task in seen if not task.done()]
        for task in unfinished:
            task.cancel()  # the consumer requeues its job (`emm.fate`: interrupted)
        if unfinished:
            await asyncio.wait(unfinished)
        self.consumer.cancel_reads(lambda _gateway: True)
        self.devices.close()
        await asyncio.gather(*(self._stop_consuming(s) for s in self.shards))
        return len(seen) - len(unfinished), len(unfinished)

    async def _stop_consuming(self, shard: Shard) -> None:
        """Cancel this worker's consumer of `shard` and give back what it was holding."""
        if shard.consumed:
            shard.consumed = False
            try:
                await self.broker.cancel(shard.queue)
            except BrokerError as exc:
                log.debug("shard %d: consumer not cancelled: %s", shard.index, exc)
        held, shard.held = shard.held, []
        for delivery in held:
            await nack(delivery, requeue=True)


def _peek_marker(body: bytes) -> TickMarker | None:
    """The marker in `body`, if it is a valid one."""
    if not TickMarker.matches(body):
        return None
    try:
        return TickMarker.decode(body)
    except MessageError:
        return None
