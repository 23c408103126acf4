"""emm.limits: message sizes refused before decoding."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from emm.errors import MessageError
from emm.limits import MAX_JOB_BYTES, check_size
from worker.consumer import Consumer

pytestmark = pytest.mark.timeout(30)


def test_check_size() -> None:
    check_size("job", b"x" * 10, 10)
    with pytest.raises(MessageError) as raised:
        check_size("job", b"x" * 11, 10)
    assert str(raised.value) == "job is 11 bytes long, at most 10 are allowed"
    assert raised.value.raw == b"x" * 11


class Settled:
    """A broker that records how each delivery was settled."""

    def __init__(self) -> None:
        self.settled: list[tuple[str, Any, BaseException | None]] = []

    async def settle(self, queue: str, delivery: Any, error: BaseException | None) -> None:
        self.settled.append((queue, delivery, error))


def test_a_worker_refuses_an_oversized_job_before_decoding_it() -> None:
    broker = Settled()
    consumer = Consumer(broker, None, None, None, read_attempts=1)  # type: ignore[arg-type]
    # Valid JSON would decode; its size alone gets it refused.
    body = b'{"v":3,"kind":"job","pad":"' + b"x" * MAX_JOB_BYTES + b'"}'
    delivery = SimpleNamespace(body=body, redelivered=False)
    asyncio.run(consumer.handle("emm.jobs.7", delivery))  # type: ignore[arg-type]
    [(queue, got, error)] = broker.settled
    assert (queue, got) == ("emm.jobs.7", delivery)
    assert isinstance(error, MessageError)
    assert str(error) == f"job is {len(body)} bytes long, at most {MAX_JOB_BYTES} are allowed"
