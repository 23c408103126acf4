"""Small blocking helpers to put messages on and take them off the project's queues in tests."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import pika

from broker.topology import (
    JOB_QUEUES,
    QUEUES,
    dead_letter_queue,
    dead_queue_arguments,
    job_queue,
    shard_of,
    work_queue_arguments,
)
from emm.messages import Meter, TickMarker


@dataclass
class Got:
    body: bytes
    headers: dict[str, Any]
    properties: Any


def declare(ch: Any, queue: str) -> None:
    """Declare `queue` as the services do (with its dead-lettering, limits and retention)."""
    arguments = None
    if queue in QUEUES:
        arguments = work_queue_arguments(queue)
    elif queue in {dead_letter_queue(q) for q in QUEUES}:
        arguments = dead_queue_arguments()
    ch.queue_declare(queue, durable=True, arguments=arguments)


def publish(
    url: str, queue: str, bodies: list[bytes], message_ids: list[str] | None = None
) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        declare(ch, queue)
        ch.confirm_delivery()
        for i, body in enumerate(bodies):
            ch.basic_publish(
                "",
                queue,
                body,
                pika.BasicProperties(
                    delivery_mode=2, message_id=message_ids[i] if message_ids else None
                ),
            )
    finally:
        conn.close()


def shard_queue(meter: Meter) -> str:
    """The queue the scheduler routes `meter`'s jobs to (its gateway's shard)."""
    return job_queue(shard_of(meter.host, meter.port))


def drain_jobs(url: str) -> list[Got]:
    """Take (and ack) every message now in the shard queues of the jobs, shard by shard."""
    return drain(url, *JOB_QUEUES)


def jobs_ready(url: str) -> int:
    """Jobs (and markers) waiting in all the shard queues."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        return sum(ch.queue_declare(q, passive=True).method.message_count for q in JOB_QUEUES)
    finally:
        conn.close()


def drain(url: str, *queues: str) -> list[Got]:
    """Take (and ack) every message now in `queues`, one queue after the other."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    out: list[Got] = []
    try:
        ch = conn.channel()
        for queue in queues:
            declare(ch, queue)
            while True:
                method, props, body = ch.basic_get(queue)
                if method is None:
                    break
                out.append(Got(body, dict(props.headers or {}), props))
                ch.basic_ack(method.delivery_tag)
    finally:
        conn.close()
    return out


def depth(url: str, queue: str) -> tuple[int, int]:
    """(messages ready, consumers) of `queue`."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        result = ch.queue_declare(queue, passive=True)
        return result.method.message_count, result.method.consumer_count
    finally:
        conn.close()


class JobCollector:
    """Consumes every shard queue of the jobs in a thread of its own, as one worker would, and
    keeps each job's body (markers left out): jobs live one tick, so they are taken as they
    come rather than drained afterwards."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.bodies: list[bytes] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> JobCollector:
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("the job collector did not start")
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        conn = pika.BlockingConnection(pika.URLParameters(self.url))
        try:
            ch = conn.channel()
            for queue in JOB_QUEUES:
                declare(ch, queue)
                ch.basic_consume(queue, self._take, auto_ack=True)
            self._ready.set()
            while not self._stop.is_set():
                conn.process_data_events(time_limit=0.1)
        finally:
            conn.close()

    def _take(self, _ch: Any, _method: Any, _props: Any, body: bytes) -> None:
        if not TickMarker.matches(body):
            self.bodies.append(body)
