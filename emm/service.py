"""Running a service's async main until SIGTERM or SIGINT asks it to stop."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop

LOOPS = ("uvloop", "asyncio")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop the services run on: uvloop unless `EMM_EVENT_LOOP=asyncio`.

    uvloop runs the same code with a loop and socket transports written in C; on a loaded
    worker the pure-Python loop itself took about a third of the CPU.
    """
    name = os.environ.get("EMM_EVENT_LOOP", "uvloop").strip().lower() or "uvloop"
    if name not in LOOPS:
        raise SystemExit(f"EMM_EVENT_LOOP={name!r}: expected one of {', '.join(LOOPS)}")
    return uvloop.new_event_loop if name == "uvloop" else asyncio.new_event_loop


def run_until_signalled(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Run `main(stop)`; the first SIGTERM/SIGINT sets `stop` so it can finish in-flight work."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    with asyncio.Runner(loop_factory=loop_factory()) as runner_:
        runner_.run(runner())
