"""Wiring of `emm simulator`."""

from __future__ import annotations

import asyncio
import logging

from emm.settings import SimulatorSettings
from simulator.model import VirtualMeter
from simulator.server import ANY_UNIT, SimulatedContext, make_server

log = logging.getLogger(__name__)


async def run(settings: SimulatorSettings, stop: asyncio.Event | None = None) -> None:
    """Serve the original README's virtual meter (any unit id) until `stop` is set."""
    stop = stop or asyncio.Event()
    context = SimulatedContext({ANY_UNIT: VirtualMeter(seed=0, step_s=settings.step_s)})
    server = make_server(context, settings.host, settings.port)
    task = asyncio.create_task(server.serve_forever())
    log.info(
        "simulator listening on %s:%d (virtual meter, values change every %g s)",
        settings.host,
        settings.port,
        settings.step_s,
    )
    try:
        await stop.wait()
    finally:
        await server.shutdown()
        task.cancel()
