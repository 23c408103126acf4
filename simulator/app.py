"""Wiring of `emm simulator`: meters from the options, placed on ports, with their faults."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from emm.errors import ConfigError
from emm.health import Progress, default_path
from emm.log import Summary, postgres_where
from emm.profiles import Profile
from emm.registers import Order
from emm.settings import MigrateSettings, SimulatorSettings
from simulator import metrics
from simulator.faults import FaultPlan, Scenario
from simulator.fleet import MAX_UNITS_PER_PORT, Placement, check_ports, place, port_count
from simulator.model import MeterSpec, make_meter, virtual_profile
from simulator.repo import MeterRow, write_config
from simulator.server import Device, Framing, ModbusTcpServer, SimulatedContext, Stats

log = logging.getLogger(__name__)

STATS_EVERY_S = 0.5
FIRST_READ_POLL_S = 0.2


@dataclass(frozen=True)
class SimulatorOptions:
    """What to simulate (from the command line); where to listen comes from SimulatorSettings."""

    meters: int | None = None  # None: one meter answering every unit id
    profile: Profile | None = None  # None: the original virtual meter
    port_per_meter: bool = False
    units_per_port: int = MAX_UNITS_PER_PORT
    scenario: Scenario = field(default_factory=Scenario)
    write_config: bool = False
    advertise_host: str = "127.0.0.1"
    max_connections: int = 0  # per port; 0: any number
    framing: Framing = "tcp"
    stats_file: Path | None = None  # the stats as JSON, rewritten every STATS_EVERY_S
    serve_order: Order | None = None  # serve the profile in this order (`MeterSpec.order`)
    serve_shift: int = 0  # serve every register this many addresses later

    @property
    def type(self) -> str:
        return virtual_profile().type if self.profile is None else self.profile.type


class Simulator:
    """The virtual meters of one run, served on their ports.

    `clock` is what the meters read as the time (injected by tests). With base port 0 every
    port is picked freely; `port_of` tells where a meter ended up.
    """

    def __init__(
        self,
        settings: SimulatorSettings,
        options: SimulatorOptions | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.options = options or SimulatorOptions()
        self.clock = clock
        self.placements: list[Placement] = place(
            self.options.meters,
            port_per_meter=self.options.port_per_meter,
            units_per_port=self.options.units_per_port,
        )
        check_ports(settings.port, self.placements)
        self.specs: list[MeterSpec] = []
        self.servers: list[ModbusTcpServer] = []
        self.stats = Stats()

    async def start(self) -> None:
        """Build the meters and listen on every port; ConfigError when a port is taken."""
        started_s = self.clock()
        scenario = self.options.scenario
        by_slot: dict[int, tuple[dict[int, Device], dict[int, FaultPlan]]] = {}
        for placement in self.placements:
            plan = FaultPlan(placement.index, started_s, scenario.seed, scenario.faults)
            spec = MeterSpec(
                seed=placement.index,
                profile=self.options.profile,
                step_s=self.settings.step_s,
                energy_resets=plan.energy_resets,
                order=self.options.serve_order,
                shift=self.options.serve_shift,
                distortions=tuple(plan.distortions),
            )
            self.specs.append(spec)
            devices, plans = by_slot.setdefault(placement.slot, ({}, {}))
            devices[placement.unit_id] = make_meter(spec)
            plans[placement.unit_id] = plan
        base = self.settings.port
        for slot in range(port_count(self.placements)):
            devices, plans = by_slot[slot]
            context = SimulatedContext(devices, self.clock, plans, self.stats)
            server = ModbusTcpServer(
                context,
                self.settings.host,
                base + slot if base else 0,
                max_connections=self.options.max_connections,
                framing=self.options.framing,
            )
            try:
                await server.start()
            except OSError as exc:
                await self.stop()
                raise ConfigError(
                    f"cannot listen on {self.settings.host}:{server.port}: {exc.strerror or exc}"
                ) from None
            self.servers.append(server)

    def port_of(self, index: int) -> int:
        """The port meter `index` listens on (after `start`)."""
        return self.servers[self.placements[index].slot].port

    def rows(self, host: str) -> list[MeterRow]:
        """The `energy_meters` rows that reach the meters at `host`."""
        return [
            MeterRow(p.description, host, self.port_of(p.index), p.slave_address)
            for p in self.placements
        ]

    async def stop(self) -> None:
        for server in self.servers:
            await server.shutdown()
        self.servers.clear()

    def write_stats(self, path: Path) -> None:
        """Write the stats to `path` as JSON, replacing it in one step (readers never see half)."""
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(json.dumps(self.stats.as_dict()))
        os.replace(partial, path)


async def _write_stats(simulator: Simulator, path: Path) -> None:
    while True:
        simulator.write_stats(path)
        await asyncio.sleep(STATS_EVERY_S)


async def _first_read(stats: Stats) -> None:
    """Log the first read the simulator answers (looked for a few times a second: the server
    answers requests in callbacks that must stay cheap)."""
    while not stats.reads:
        await asyncio.sleep(FIRST_READ_POLL_S)
    log.info("first read answered (%d connection(s) so far)", stats.connections)


async def run(
    settings: SimulatorSettings,
    stop: asyncio.Event | None = None,
    options: SimulatorOptions | None = None,
) -> None:
    """Serve the meters of `options` (default: the original virtual meter) until `stop` is set."""
    stop = stop or asyncio.Event()
    options = options or SimulatorOptions()
    simulator = Simulator(settings, options)
    await simulator.start()
    # it only answers: its health is its event loop turning with its ports open
    health = Progress(
        "simulator",
        Path(settings.health_file or default_path("simulator")),
        settings.health_stall_s,
    )
    health.note = f"{len(simulator.placements)} meter(s) on {len(simulator.servers)} port(s)"
    beat = asyncio.create_task(health.run(stop, dict))
    metrics.STATS.stats = simulator.stats
    summary = Summary(log, simulator.stats.counts, settings.log_summary_s)
    summaries = asyncio.create_task(summary.run(stop))
    first = asyncio.create_task(_first_read(simulator.stats))
    stats_writer = None
    if options.stats_file is not None:
        stats_writer = asyncio.create_task(_write_stats(simulator, options.stats_file))
    try:
        _log_start(simulator, settings, options)
        if options.write_config:
            await _write_config(simulator, options)
        await stop.wait()
    finally:
        stop.set()
        await beat
        summaries.cancel()
        first.cancel()
        metrics.STATS.stats = None
        if stats_writer is not None:
            stats_writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stats_writer
        await simulator.stop()
        _log_stop(simulator.stats)
        if options.stats_file is not None:
            simulator.write_stats(options.stats_file)


def _log_start(
    simulator: Simulator, settings: SimulatorSettings, options: SimulatorOptions
) -> None:
    """One line for what is served where, one for how ports take connections."""
    ports = sorted({server.port for server in simulator.servers})
    where = str(ports[0]) if len(ports) == 1 else f"{ports[0]}..{ports[-1]} ({len(ports)} ports)"
    log.info(
        "simulator listening on %s:%s: %d meter(s) of type %s, values change every %g s%s",
        settings.host,
        where,
        len(simulator.placements),
        options.type,
        settings.step_s,
        f", {len(options.scenario.faults)} fault(s)" if options.scenario.faults else "",
    )
    if options.max_connections or options.framing != "tcp":
        log.info(
            "each port accepts %s connection(s), framing %s",
            options.max_connections or "any number of",
            options.framing,
        )


async def _write_config(simulator: Simulator, options: SimulatorOptions) -> None:
    """Register the served meters in PostgreSQL (`--write-config`)."""
    profile = options.profile or virtual_profile()
    dsn = MigrateSettings.from_env().postgres_dsn
    result = await asyncio.to_thread(
        write_config, dsn, profile, simulator.rows(options.advertise_host)
    )
    log.info(
        "registered %d meter(s) at %s in %s: %d added, %d updated",
        len(simulator.placements),
        options.advertise_host,
        postgres_where(dsn),
        result.added,
        result.updated,
    )


def _log_stop(s: Stats) -> None:
    """What the simulator did, at shutdown."""
    log.info(
        "simulator stopped: %d reads, %d writes refused, %d dropped, %d resets, exceptions %s",
        s.reads,
        s.writes_refused,
        s.dropped,
        s.resets,
        dict(s.exceptions),
    )
    log.info(
        "connections: %d accepted, %d refused; most open at once per port: %s",
        s.connections,
        s.refused,
        json.dumps({str(port): peak for port, peak in sorted(s.peaks.items())}),
    )
