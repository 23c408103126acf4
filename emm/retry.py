"""Every wait before trying again, as named policies on tenacity.

One policy per kind of wait, so the intervals live here and nowhere else. Each waits `first_s`,
then twice as long after every failure, up to `max_s`:

    policy              first   up to                    retries            until
    BROKER_CONNECT      0.5 s   10 s                     BrokerError        connected
    BROKER_RECONNECT    1 s     5 s                      BrokerError,       reconnected, or closed
                                                         Misconfigured
    JOB_PUBLISH         0.2 s   5 s                      BrokerError        confirmed, or the tick's
                                                                            give-up time (no wait
                                                                            goes past it)
    OUTBOX_PUBLISH      0.2 s   2 s                      BrokerError        confirmed
    sink_write(max_s)   0.5 s   EMM_WRITER_RETRY_MAX_S   SinkUnavailable    written, or the writer
                                                                            stops
    DEVICE_READ         0.05 s  1 s                      TransientDevice-   the read attempts, or
                                                         Error              the tick's budget
    SINK_CHECK          0.5 s   10 s                     SinkUnavailable    InfluxDB answered the
                                                                            start-up checks, or the
                                                                            writer stops

What stops a loop is the caller's (a deadline, an event, a flag), given to `retrying` or `call`.

A wait for a service that is down is logged by an `Outage`: one line when it starts, one when
it ends, never one per attempt.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_never,
    wait_exponential,
)

from emm.errors import BrokerError, Misconfigured, SinkUnavailable, TransientDeviceError

T = TypeVar("T")

OnRetry = Callable[[BaseException, float], None]
"""Called with the error and the wait before the next attempt."""
Stop = Callable[[RetryCallState], bool]
"""Whether to give up (after a failed attempt)."""

# No wait shorter than this when a deadline is near: a zero sleep would spin.
MIN_WAIT_S = 0.01


@dataclass(frozen=True)
class Policy:
    """A kind of wait: `first_s`, doubling after each failure up to `max_s`, retrying `retry_on`."""

    name: str
    first_s: float
    max_s: float
    retry_on: type[BaseException] | tuple[type[BaseException], ...]

    def wait_s(self, failures: int) -> float:
        """The wait after the `failures`-th failure in a row (1 for the first)."""
        return min(self.first_s * 2 ** (failures - 1), self.max_s)

    def retrying(
        self,
        *,
        stop: Stop = stop_never,
        attempts: int | None = None,
        until: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_retry: OnRetry | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> AsyncRetrying:
        """A tenacity loop for this policy; the last error is re-raised when it stops.

        It stops when `stop` says so, after `attempts` attempts, or once `clock()` reached
        `until`; no wait goes past `until`.
        """
        stops = [stop]
        if attempts is not None:
            stops.append(stop_after_attempt(attempts))
        if until is not None:
            deadline = until
            stops.append(lambda _state: clock() >= deadline)
        exponential = wait_exponential(multiplier=self.first_s, max=self.max_s)

        def wait(state: RetryCallState) -> float:
            if until is None:
                return exponential(state)
            return min(exponential(state), max(until - clock(), MIN_WAIT_S))

        def before_sleep(state: RetryCallState) -> None:
            if on_retry is not None:
                assert state.outcome is not None and state.next_action is not None
                error = state.outcome.exception()
                assert error is not None
                on_retry(error, state.next_action.sleep)

        return AsyncRetrying(
            sleep=sleep,
            stop=lambda state: any(s(state) for s in stops),
            wait=wait,
            retry=retry_if_exception_type(self.retry_on),
            before_sleep=before_sleep,
            reraise=True,
        )

    async def call(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        stop: Stop = stop_never,
        attempts: int | None = None,
        until: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_retry: OnRetry | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> T:
        """`await fn()`, retried as `retrying` says.

        The first attempt goes out on its own: setting tenacity up costs more than a publish
        does, and most calls succeed at once. A first failure becomes tenacity's first attempt,
        so the waits and stop conditions are the same as if tenacity had made it.
        """
        try:
            return await fn()
        except self.retry_on as exc:
            first: BaseException | None = exc
        loop = self.retrying(
            stop=stop, attempts=attempts, until=until, clock=clock, on_retry=on_retry, sleep=sleep
        )
        async for attempt in loop:
            with attempt:
                if first is not None:
                    error, first = first, None
                    raise error
                return await fn()
        raise AssertionError("unreachable: tenacity re-raises the last error")


BROKER_CONNECT = Policy("broker connect", 0.5, 10.0, BrokerError)
# A broker that comes back may not have loaded its users and vhosts yet: a refusal after a
# connection was lost is waited out like an outage (at start-up it stops the service).
BROKER_RECONNECT = Policy("broker reconnect", 1.0, 5.0, (BrokerError, Misconfigured))
JOB_PUBLISH = Policy("job publish", 0.2, 5.0, BrokerError)
OUTBOX_PUBLISH = Policy("outbox publish", 0.2, 2.0, BrokerError)
DEVICE_READ = Policy("device read", 0.05, 1.0, TransientDeviceError)
SINK_CHECK = Policy("sink check", 0.5, 10.0, SinkUnavailable)


def sink_write(max_s: float) -> Policy:
    """Writing a batch to the sink; `max_s` is EMM_WRITER_RETRY_MAX_S."""
    return Policy("sink write", 0.5, max_s, SinkUnavailable)


def utc(epoch_s: float) -> str:
    """`2026-12-02T06:50:01Z`: when an outage began, as the log lines say it."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))


class Outage:
    """A service that is down, logged as one line when it goes down and one when it is back.

    `failed` (usable as a policy's `on_retry`) logs `<what> not reachable since <UTC>: <error>;
    retrying` the first time only; `over` logs `<what> back after N s` once it had failed.
    `started` and `ended` change the wording (fields `what`, `since`, `error`; `what`,
    `after_s`).
    """

    STARTED = "{what} not reachable since {since}: {error}; retrying"
    ENDED = "{what} back after {after_s:.0f} s"

    def __init__(
        self,
        what: str,
        log: logging.Logger,
        *,
        started: str = STARTED,
        ended: str = ENDED,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.what = what
        self.log = log
        self.started = started
        self.ended = ended
        self.clock = clock
        self.wall = wall
        self.since: float | None = None  # clock() when it went down

    @property
    def active(self) -> bool:
        """Whether the service is down (failed, and not back since)."""
        return self.since is not None

    def failed(self, error: BaseException | str, _wait_s: float = 0.0) -> None:
        """An attempt failed: the start line, unless the outage already began."""
        if self.since is None:
            self.since = self.clock()
            since = utc(self.wall())
            self.log.warning(self.started.format(what=self.what, since=since, error=error))

    def over(self, extra: str = "") -> float | None:
        """It answered again: the end line (with `extra` appended) and how long it was down,
        or None when it was not."""
        if self.since is None:
            return None
        after_s = self.clock() - self.since
        self.since = None
        self.log.info(self.ended.format(what=self.what, after_s=after_s) + extra)
        return after_s
