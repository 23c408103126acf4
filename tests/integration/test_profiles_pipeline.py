"""Every shipped profile through the whole pipeline, in one run: simulator, scheduler, worker,
writer and InfluxDB 1.x, the register maps loaded into PostgreSQL as `emm migrate` loads them.

One virtual device per profile, each on its own port, all read on the same 2 s cron for a few
ticks; then each profile's test compares every value stored for its device with what the
simulator's model says that tick must read (`simulator.model.expected`), exactly. One run
serves all profiles because a pipeline per profile would cost minutes of CI time.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest

from broker.topology import QUEUES
from devservices import postgres, rabbitmq
from devservices.net import wait_for
from devservices.processes import Processes
from devservices.readers import InfluxQL
from emm.profiles import Profile, shipped_profiles
from emm.registers import RESERVED_NAMES
from emm.settings import SimulatorSettings
from postgres.connection import connect
from postgres.profiles import import_profile
from postgres.schema import migrate
from simulator.app import Simulator, SimulatorOptions
from simulator.model import MeterSpec, expected

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

STEP_S = 2  # the cron ticks every 2 s and the simulated values change every 2 s
TICKS = 3  # stored ticks every device must have before the run stops
UNIT = 4  # the device read is the simulator's 4th meter: seed 3, a prosumer (power changes sign)
PROFILES = shipped_profiles()


@dataclass(frozen=True)
class Stored:
    """What the run stored for one profile's device."""

    spec: MeterSpec
    energy: dict[int, dict[str, float]]  # tick -> the `energy` point's fields
    up: dict[int, bool]  # tick -> meter_status.up


class Devices:
    """One simulator per profile, served from an event loop on a thread of the test process."""

    def __init__(self, profiles: list[Profile]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        settings = SimulatorSettings(host="127.0.0.1", port=0, step_s=STEP_S, log_level="WARNING")
        self.simulators = {
            p.type: Simulator(settings, SimulatorOptions(meters=UNIT, profile=p)) for p in profiles
        }

    def __enter__(self) -> Devices:
        self.thread.start()
        for simulator in self.simulators.values():
            asyncio.run_coroutine_threadsafe(simulator.start(), self.loop).result(30)
        return self

    def __exit__(self, *_exc: object) -> None:
        for simulator in self.simulators.values():
            asyncio.run_coroutine_threadsafe(simulator.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def port(self, type_: str) -> int:
        return self.simulators[type_].port_of(UNIT - 1)

    def spec(self, type_: str) -> MeterSpec:
        return self.simulators[type_].specs[UNIT - 1]


def _configure(dsn: str, devices: Devices) -> dict[str, int]:
    """The shipped profiles and one meter per profile; {type: meter_id}."""
    with connect(dsn) as conn:
        migrate(conn)
        for profile in PROFILES:
            import_profile(conn, profile, replace=True)
    conn.close()
    ids = {}
    with psycopg2.connect(dsn) as pg, pg.cursor() as cur:
        for profile in PROFILES:
            cur.execute(
                "INSERT INTO energy_meters (host, port, slave_address, type, description) "
                "VALUES ('127.0.0.1', %s, %s, %s, %s) RETURNING id",
                (devices.port(profile.type), UNIT, profile.type, f"every-profile {profile.type}"),
            )
            ids[profile.type] = cur.fetchone()[0]
    pg.close()
    return ids


def _energy(db: InfluxQL) -> dict[str, dict[int, dict[str, float]]]:
    """{meter_id: {tick: the `energy` point's fields}}."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    for row in db.query("SELECT * FROM energy"):
        fields = {k: v for k, v in row.items() if v is not None and k not in RESERVED_NAMES}
        out.setdefault(row["meter_id"], {})[row["time"]] = fields
    return out


def _up(db: InfluxQL) -> dict[str, dict[int, bool]]:
    """{meter_id: {tick: meter_status.up}}."""
    out: dict[str, dict[int, bool]] = {}
    for row in db.query("SELECT up, meter_id FROM meter_status"):
        out.setdefault(row["meter_id"], {})[row["time"]] = row["up"]
    return out


def _ticks_stored(db: InfluxQL, meter_ids: Iterable[int]) -> int:
    """The fewest ticks any of the meters has a status point for."""
    up = _up(db)
    return min(len(up.get(str(meter_id), {})) for meter_id in meter_ids)


@pytest.fixture(scope="module")
def stored(
    postgres_server: str,
    amqp_server: str,
    influx_v1_server: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Stored]]:
    """Run the pipeline once over every shipped profile; what was stored, by type."""
    rabbitmq.delete_queues(amqp_server, ("emm.jobs", *QUEUES, "emm.jobs.dead", "emm.readings.dead"))
    db = InfluxQL(influx_v1_server, f"emm_test_{uuid.uuid4().hex[:12]}")
    db.create_database()
    processes = Processes(Path(tmp_path_factory.mktemp("every-profile")))
    try:
        with postgres.fresh_database(postgres_server) as dsn, Devices(PROFILES) as devices:
            ids = _configure(dsn, devices)
            env = {
                "EMM_POSTGRES_DSN": dsn,
                "EMM_AMQP_URL": amqp_server,
                "EMM_INFLUX_API": "v1",
                "EMM_INFLUX_URL": db.url,
                "EMM_INFLUX_BUCKET": db.database,
                "EMM_READ_CRON": f"*/{STEP_S} * * * * *",
                "EMM_WRITER_FLUSH_INTERVAL_MS": "200",
            }
            processes.start("writer", ["writer"], env)
            processes.start("worker", ["worker"], env)
            processes.wait_log("worker", "worker started", 30)
            processes.start("scheduler", ["scheduler"], env)
            wait_for(lambda: _ticks_stored(db, ids.values()) >= TICKS, 60, 0.5)
            assert processes.stop("scheduler") == 0
            time.sleep(2.5)  # let the last tick's readings through
            for name in ("worker", "writer"):
                assert processes.procs[name].poll() is None, processes.log(name)
            energy, up = _energy(db), _up(db)
            yield {
                type_: Stored(devices.spec(type_), energy.get(str(i), {}), up.get(str(i), {}))
                for type_, i in ids.items()
            }
    finally:
        processes.stop_all()
        db.drop_database()


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.type)
def test_every_stored_value_is_what_the_device_served(
    profile: Profile, stored: dict[str, Stored]
) -> None:
    run = stored[profile.type]
    ticks = sorted(run.up)
    assert len(ticks) >= TICKS
    # on the cron's grid; a tick the worker dropped as late on a loaded machine is no
    # fault of the profile, so gaps are allowed here (the end-to-end tests forbid them)
    assert all(tick % (STEP_S * 1000) == 0 for tick in ticks), ticks
    assert run.up == dict.fromkeys(ticks, True)
    assert sorted(run.energy) == ticks
    # text (identity, states) goes to meter_info (tests/integration/test_sunspec_pipeline.py);
    # registers read once, then daily, are in the first tick the scheduler read
    numbers = {r.name for r in profile.registers if not r.is_text}
    once = {r.name for r in profile.registers if r.poll_every == 0}
    for tick in ticks:
        want = expected(run.spec, tick)
        assert set(want) == numbers  # every register, no sentinel
        got = run.energy[tick]
        assert numbers - once <= set(got), tick
        assert got == {name: want[name] for name in got}, tick
