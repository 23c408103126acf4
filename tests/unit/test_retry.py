"""emm.retry: the named policies wait as their table says, with an injected sleep and clock."""

from __future__ import annotations

import asyncio
import logging

import pytest

from emm import retry
from emm.errors import BrokerError, SinkUnavailable, TransientDeviceError

pytestmark = pytest.mark.timeout(30)


class Clock:
    """A clock that moves only when the policy sleeps."""

    def __init__(self, t_s: float = 1000.0) -> None:
        self.t_s = t_s
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.t_s

    async def sleep(self, seconds: float) -> None:
        self.waits.append(round(seconds, 6))
        self.t_s += seconds


def failing(error: BaseException, failures: int, result: object = "done"):
    """An async callable that raises `error` `failures` times, then returns `result`."""
    calls = []

    async def fn() -> object:
        calls.append(1)
        if len(calls) <= failures:
            raise error
        return result

    fn.calls = calls  # type: ignore[attr-defined]
    return fn


@pytest.mark.parametrize(
    ("policy", "waits"),
    [
        (retry.BROKER_CONNECT, [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]),
        (retry.BROKER_RECONNECT, [1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0]),
        (retry.JOB_PUBLISH, [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]),
        (retry.OUTBOX_PUBLISH, [0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]),
        (retry.sink_write(3.0), [0.5, 1.0, 2.0, 3.0, 3.0, 3.0, 3.0]),
        (retry.DEVICE_READ, [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]),
    ],
)
def test_each_policy_doubles_up_to_its_cap(policy: retry.Policy, waits: list[float]) -> None:
    clock = Clock()
    error = policy.retry_on if isinstance(policy.retry_on, type) else policy.retry_on[0]
    fn = failing(error("down"), len(waits))
    assert asyncio.run(policy.call(fn, sleep=clock.sleep)) == "done"
    assert clock.waits == waits
    assert len(fn.calls) == len(waits) + 1
    assert [policy.wait_s(n) for n in range(1, len(waits) + 1)] == pytest.approx(waits)


def test_a_first_success_makes_no_wait() -> None:
    clock = Clock()
    fn = failing(BrokerError("down"), 0)
    assert asyncio.run(retry.OUTBOX_PUBLISH.call(fn, sleep=clock.sleep)) == "done"
    assert (clock.waits, len(fn.calls)) == ([], 1)


def test_other_errors_are_not_retried() -> None:
    clock = Clock()
    fn = failing(ValueError("a bug"), 5)
    with pytest.raises(ValueError, match="a bug"):
        asyncio.run(retry.OUTBOX_PUBLISH.call(fn, sleep=clock.sleep))
    assert (clock.waits, len(fn.calls)) == ([], 1)
    fn = failing(SinkUnavailable("influx down"), 5)
    with pytest.raises(SinkUnavailable):
        asyncio.run(retry.BROKER_CONNECT.call(fn, sleep=clock.sleep))
    assert len(fn.calls) == 1


def test_publish_within_a_deadline_never_waits_past_it() -> None:
    clock = Clock(1000.0)
    fn = failing(BrokerError("down"), 100)
    with pytest.raises(BrokerError):
        asyncio.run(retry.JOB_PUBLISH.call(fn, until=1003.0, clock=clock, sleep=clock.sleep))
    # 0.2 + 0.4 + 0.8 = 1.4 s, then only the 1.6 s left, then the deadline is reached
    assert clock.waits == [0.2, 0.4, 0.8, 1.6]
    assert clock.t_s == pytest.approx(1003.0)
    assert len(fn.calls) == 5


def test_a_deadline_already_passed_stops_after_the_first_failure() -> None:
    clock = Clock(1000.0)
    fn = failing(BrokerError("down"), 100)
    with pytest.raises(BrokerError):
        asyncio.run(retry.JOB_PUBLISH.call(fn, until=999.0, clock=clock, sleep=clock.sleep))
    assert (clock.waits, len(fn.calls)) == ([], 1)


def test_stop_and_attempts() -> None:
    clock = Clock()
    stopping = asyncio.Event()
    fn = failing(SinkUnavailable("influx down"), 100)

    def on_retry(exc: BaseException, wait_s: float) -> None:
        if len(fn.calls) == 3:
            stopping.set()

    with pytest.raises(SinkUnavailable):
        asyncio.run(
            retry.sink_write(30.0).call(
                fn, stop=lambda _s: stopping.is_set(), on_retry=on_retry, sleep=clock.sleep
            )
        )
    assert len(fn.calls) == 4  # set during the third failure's report, seen after the fourth

    fn = failing(TransientDeviceError("timeout"), 100)
    with pytest.raises(TransientDeviceError):
        asyncio.run(retry.DEVICE_READ.call(fn, attempts=3, sleep=clock.sleep))
    assert len(fn.calls) == 3


def test_on_retry_gets_the_error_and_the_wait() -> None:
    clock = Clock()
    seen: list[tuple[str, float]] = []
    fn = failing(BrokerError("down"), 3)
    asyncio.run(
        retry.BROKER_CONNECT.call(
            fn, on_retry=lambda exc, wait_s: seen.append((str(exc), wait_s)), sleep=clock.sleep
        )
    )
    assert seen == [("down", 0.5), ("down", 1.0), ("down", 2.0)]


def test_cancellation_goes_through() -> None:
    async def scenario() -> None:
        fn = failing(BrokerError("down"), 10**6)
        task = asyncio.create_task(retry.BROKER_RECONNECT.call(fn))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())


def test_an_outage_is_one_line_when_it_starts_and_one_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    outage = retry.Outage(
        "RabbitMQ at 127.0.0.1:5672",
        logging.getLogger("test.outage"),
        clock=lambda: now[0],
        wall=lambda: 1_764_658_201.0,  # 2025-12-02T06:50:01Z
    )
    caplog.set_level(logging.INFO, logger="test.outage")
    assert outage.over() is None  # nothing to end
    for _ in range(5):
        outage.failed(BrokerError("connection refused"))
        now[0] += 9
    assert outage.active
    assert outage.over("; 78 buffered readings published") == 45
    assert not outage.active
    assert [r.getMessage() for r in caplog.records] == [
        "RabbitMQ at 127.0.0.1:5672 not reachable since 2025-12-02T06:50:01Z: connection "
        "refused; retrying",
        "RabbitMQ at 127.0.0.1:5672 back after 45 s; 78 buffered readings published",
    ]
