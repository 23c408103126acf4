"""Running a service: its async main until SIGTERM or SIGINT asks it to stop, or a bad setting.

A stop is prompt in every state: the first signal sets the service's `stop` event, which its
loops and its waits (`unless_stopped`) watch, so it settles its in-flight work and returns; if
it has not within `grace_s`, or a second signal comes, its main task is cancelled.

The exit statuses of every `emm` command:

    status  meaning
    0       done (a service: stopped when asked)
    1       a runtime failure: a service needed was unreachable for a one-shot command, or a
            fault of ours
    2       a usage error: a bad option or argument (a type, a file) given on the command line
    78      a configuration that cannot work (EX_CONFIG): a bad or empty EMM_* variable, a refused
            login, a missing vhost, database, bucket or schema, the other InfluxDB API; and
            `emm check` finding problems
    130     interrupted (Ctrl-C)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NoReturn

import uvloop

from emm.errors import (
    BrokerError,
    ConfigError,
    DatabaseError,
    DeviceError,
    EmmError,
    Misconfigured,
    SinkError,
)
from emm.settings import EventLoop

log = logging.getLogger(__name__)

STOP_GRACE_S = 30.0  # after the first signal, how long a service may take to stop on its own

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78  # sysexits.h EX_CONFIG


def exit_code(error: EmmError, *, service: bool = False) -> int:
    """The status a command ends with for `error`; in a service every ConfigError is the
    configuration's (a service takes no argument that names a type or a file)."""
    if isinstance(error, Misconfigured) or (service and isinstance(error, ConfigError)):
        return EXIT_CONFIG
    if isinstance(error, BrokerError | DatabaseError | SinkError | DeviceError):
        return EXIT_FAILURE
    return EXIT_USAGE


def loop_factory(event_loop: EventLoop) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop named by `EMM_EVENT_LOOP`: uvloop, or Python's own asyncio loop.

    uvloop runs the same code with a loop and socket transports written in C; on a loaded
    worker the pure-Python loop itself took about a third of the CPU.
    """
    return uvloop.new_event_loop if event_loop == "uvloop" else asyncio.new_event_loop


def run_until_signalled(
    main: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
    *,
    event_loop: EventLoop,
    grace_s: float = STOP_GRACE_S,
) -> None:
    """Run `main(stop)`; the first SIGTERM/SIGINT sets `stop` so it can finish in-flight work,
    and `main` is cancelled if it still runs `grace_s` later or at a second signal."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def on_signal() -> None:
            if stop.is_set():
                task.cancel()
                return
            stop.set()
            loop.call_later(grace_s, task.cancel)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        try:
            await main(stop)
        except asyncio.CancelledError:
            if not stop.is_set():
                raise
            log.warning(
                "not stopped %g s after the signal (or at a second one): stopping now", grace_s
            )

    with asyncio.Runner(loop_factory=loop_factory(event_loop)) as runner_:
        runner_.run(runner())


async def unless_stopped(stop: asyncio.Event, awaitable: Awaitable[object]) -> bool:
    """Await `awaitable` unless `stop` is set first, which cancels it; whether it finished.

    For a wait with no end of its own, such as connecting to a RabbitMQ that is not up yet:
    a SIGTERM then ends it instead of waiting for the broker.
    """
    work = asyncio.ensure_future(awaitable)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
    if work.cancelled():
        return False
    work.result()  # its error, if it failed
    return True


def serve(
    service: str,
    main: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
    *,
    event_loop: EventLoop,
    grace_s: float = STOP_GRACE_S,
) -> None:
    """`run_until_signalled`, ending the process as `exit_with` does when `main` raises a
    configuration error (a refused login, a missing vhost, bucket or schema, ...)."""
    try:
        run_until_signalled(main, event_loop=event_loop, grace_s=grace_s)
    except ConfigError as exc:
        exit_with(service, exc)


def exit_with(service: str, error: EmmError) -> NoReturn:
    """End the process as `emm <service>` does for a configuration that cannot work: one line on
    stderr, status 78 (EX_CONFIG)."""
    print(f"emm {service}: {error}", file=sys.stderr)
    raise SystemExit(exit_code(error, service=True))
