"""Running a service: its async main until SIGTERM or SIGINT asks it to stop, or a bad setting.

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
import signal
import sys
from collections.abc import Callable, Coroutine
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
    main: Callable[[asyncio.Event], Coroutine[Any, Any, None]], *, event_loop: EventLoop
) -> None:
    """Run `main(stop)`; the first SIGTERM/SIGINT sets `stop` so it can finish in-flight work."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    with asyncio.Runner(loop_factory=loop_factory(event_loop)) as runner_:
        runner_.run(runner())


def serve(
    service: str,
    main: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
    *,
    event_loop: EventLoop,
) -> None:
    """`run_until_signalled`, ending the process as `exit_with` does when `main` raises a
    configuration error (a refused login, a missing vhost, bucket or schema, ...)."""
    try:
        run_until_signalled(main, event_loop=event_loop)
    except ConfigError as exc:
        exit_with(service, exc)


def exit_with(service: str, error: EmmError) -> NoReturn:
    """End the process as `emm <service>` does for a configuration that cannot work: one line on
    stderr, status 78 (EX_CONFIG)."""
    print(f"emm {service}: {error}", file=sys.stderr)
    raise SystemExit(exit_code(error, service=True))
