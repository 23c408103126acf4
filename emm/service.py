"""Running a service: its async main until SIGTERM or SIGINT asks it to stop, or a bad setting."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

import uvloop

from emm.errors import EmmError
from emm.settings import EventLoop


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


def exit_with(service: str, error: EmmError) -> NoReturn:
    """End the process as `emm <service>` does for a bad setting: one line on stderr, status 2."""
    print(f"emm {service}: {error}", file=sys.stderr)
    raise SystemExit(2)
