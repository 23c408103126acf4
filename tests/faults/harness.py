"""The fault tests' harness: the whole pipeline as processes, and the check of what reached
InfluxDB against what the simulator says each tick must contain. The private services the
tests kill come from `devservices`.

"loss" = an expected (meter, tick) missing in InfluxDB; "dup" = a point that should not be
there: an extra meter, an off-grid timestamp, or a value that differs from the simulator's.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg2

from devservices.net import free_port_run, port_open, wait_for
from devservices.processes import Processes
from devservices.readers import InfluxQL
from simulator.model import MeterSpec, expected


@dataclass
class Pipeline:
    """The simulator and the four services as processes, configured for one test."""

    processes: Processes
    dsn: str
    amqp_url: str
    influx_url: str
    meters: int
    period_s: int = 5
    profile: str = "sdm630"
    workers: int = 2
    simulator_args: list[str] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    sim_port: int = 0  # chosen at start: a run of free ports when each meter has its own
    specs: dict[int, MeterSpec] = field(default_factory=dict)  # meter id -> simulator spec

    @property
    def env(self) -> dict[str, str]:
        return {
            "EMM_POSTGRES_DSN": self.dsn,
            "EMM_AMQP_URL": self.amqp_url,
            "EMM_INFLUX_URL": self.influx_url,
            "EMM_INFLUX_API": "v1",
            "EMM_INFLUX_BUCKET": "energy",
            "EMM_READ_CRON": f"*/{self.period_s} * * * * *",
            "EMM_SIMULATOR_STEP_S": str(self.period_s),
            "EMM_WRITER_FLUSH_INTERVAL_MS": "500",
            "EMM_READ_TIMEOUT_S": "1.0",
            "EMM_LOG_LEVEL": "INFO",
            **self.extra_env,
        }

    def start_simulator(self) -> None:
        ports = 1
        if "--port-per-meter" in self.simulator_args:
            ports = self.meters
        elif "--units-per-port" in self.simulator_args:
            per_port = int(self.simulator_args[self.simulator_args.index("--units-per-port") + 1])
            ports = -(-self.meters // per_port)
        self.sim_port = self.sim_port or free_port_run(ports)
        args = [
            "simulator",
            "--profile",
            self.profile,
            "--meters",
            str(self.meters),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.sim_port),
            "--write-config",
            *self.simulator_args,
        ]
        self.processes.start("simulator", args, self.env)
        wait_for(lambda: port_open("127.0.0.1", self.sim_port), 30)
        wait_for(self._registered, 30)

    def _registered(self) -> bool:
        conn = psycopg2.connect(self.dsn)
        try:
            with conn, conn.cursor() as cur:
                cur.execute(
                    "SELECT id, description FROM energy_meters WHERE description LIKE 'sim-%'"
                )
                rows = cur.fetchall()
        except psycopg2.errors.UndefinedTable:
            return False  # the simulator has not created the schema yet
        finally:
            conn.close()
        if len(rows) < self.meters:
            return False
        for meter_id, description in rows:
            index = int(description.removeprefix("sim-"))
            self.specs[meter_id] = MeterSpec.of_type(self.profile, seed=index, step_s=self.period_s)
        return True

    @property
    def period_ms(self) -> int:
        return self.period_s * 1000

    def run(self) -> int:
        """Start the simulator, then the services; returns the first tick published."""
        self.start_simulator()
        return self.start_services()

    def start_services(self) -> int:
        """Start writer, workers and then the scheduler; returns the first tick it publishes."""
        self.start("writer")
        for n in range(self.workers):
            self.start(f"worker{n}")
        wait_for(lambda: "writer started" in self.log("writer"), 30)
        for n in range(self.workers):
            wait_for(lambda n=n: "worker started" in self.log(f"worker{n}"), 30)
        self.start("scheduler")
        first = wait_for(lambda: published_ticks(self.log("scheduler")), 30)
        return first[0]

    def start(self, name: str) -> None:
        command = name.rstrip("0123456789")
        self.processes.start(name, [command], self.env)

    def kill(self, name: str) -> None:
        proc = self.processes.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def alive(self) -> dict[str, int | None]:
        """Exit codes of the services (None: still running)."""
        return {name: proc.poll() for name, proc in self.processes.procs.items()}

    def log(self, name: str) -> str:
        return self.processes.log(name)

    def rss_mb(self, name: str) -> float:
        """Resident memory of a service process now."""
        pid = self.processes.procs[name].pid
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError(f"no VmRSS for {name}")


@dataclass
class Verdict:
    expected: int
    stored: int
    lost: list[tuple[int, int]]
    dup: list[str]
    straddled: list[str] = field(default_factory=list)  # accepted with `straddle=True`

    def __str__(self) -> str:
        return (
            f"{self.stored} stored of {self.expected} expected; lost {len(self.lost)} "
            f"{self.lost[:10]}; dup {len(self.dup)} {self.dup[:5]}; "
            f"straddled {len(self.straddled)} {self.straddled[:5]}"
        )


_NOT_FIELDS = ("time", "meter_id", "type", "description")


def straddles(
    got: dict[str, float], at_tick: dict[str, float], next_step: dict[str, float]
) -> bool:
    """Whether `got` is one read that began in the tick's simulator step and ended in the next:
    every field is the tick's value or the next step's, and at least one field whose value
    changed between the two steps still has the tick's (so the read began in time)."""
    if got.keys() != at_tick.keys():
        return False
    if any(v != at_tick[k] and v != next_step.get(k) for k, v in got.items()):
        return False
    return any(v == at_tick[k] != next_step.get(k) for k, v in got.items())


def check(
    pipeline: Pipeline,
    influx: InfluxQL,
    first_tick_ms: int,
    last_tick_ms: int,
    only: set[int] | None = None,
    straddle: bool = False,
) -> Verdict:
    """Compare every `energy` point with the simulator's values for ticks in the window
    (for the meters in `only`, when given).

    The simulator's values change at the middle of each tick (its step is the period, time
    rounded to the nearest step), so a read that starts just before half a tick (the latest
    a worker starts one) may get its last requests answered with the next step's values.
    With `straddle` such a point counts as stored, and is listed in `straddled`; any other
    difference is a doubled point all the same."""
    period_ms = pipeline.period_s * 1000
    ticks = list(range(first_tick_ms, last_tick_ms + 1, period_ms))
    rows = influx.query(
        f"SELECT * FROM energy WHERE time >= {first_tick_ms}ms AND time <= {last_tick_ms}ms"
    )
    stored: dict[tuple[int, int], dict[str, Any]] = {}
    dup: list[str] = []
    straddled: list[str] = []
    cache: dict[tuple[int, int], dict[str, float]] = {}
    for row in rows:
        meter_id = int(row["meter_id"])
        if only is not None and meter_id not in only:
            continue
        tick = int(row["time"])
        key = (meter_id, tick)
        if meter_id not in pipeline.specs:
            dup.append(f"unknown meter {meter_id}")
            continue
        if tick % period_ms:
            dup.append(f"meter {meter_id} off-grid timestamp {tick}")
            continue
        stored[key] = row
        if key not in cache:
            cache[key] = expected(pipeline.specs[meter_id], tick)
        want = cache[key]
        got = {k: v for k, v in row.items() if k not in _NOT_FIELDS and v is not None}
        if got != want:
            wrong = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
            following = expected(pipeline.specs[meter_id], tick + period_ms)
            if straddle and straddles(got, want, following):
                straddled.append(f"meter {meter_id} tick {tick}: next step's {wrong[:4]}")
            else:
                dup.append(f"meter {meter_id} tick {tick}: wrong {wrong[:4]}")
    meters = sorted(pipeline.specs if only is None else only)
    lost = [(m, t) for t in ticks for m in meters if (m, t) not in stored]
    return Verdict(len(ticks) * len(meters), len(stored), lost, dup, straddled)


def published_ticks(scheduler_log: str) -> list[int]:
    """Ticks (ms) the scheduler's log says it published completely."""
    ticks = []
    for line in scheduler_log.splitlines():
        marker = ": tick "
        if marker in line and "jobs published in" in line:
            stamp = line.split(marker, 1)[1].split(": ", 1)[0]
            ticks.append(int(datetime.fromisoformat(stamp).timestamp() * 1000))
    return ticks


def wait_all_stored(
    pipeline: Pipeline,
    influx: InfluxQL,
    first: int,
    last: int,
    limit_s: float,
    straddle: bool = False,
) -> Verdict:
    """Check every second until every (meter, tick) up to `last` is stored, or `limit_s` passes."""
    deadline = time.monotonic() + limit_s
    while True:
        verdict = check(pipeline, influx, first, last, straddle=straddle)
        if not verdict.lost or time.monotonic() > deadline:
            return verdict
        time.sleep(1)


def stored_ticks(influx: InfluxQL) -> list[int]:
    """The distinct timestamps stored so far."""
    rows = influx.query("SELECT count(up) FROM meter_status GROUP BY time(1s) fill(none)")
    return sorted(int(r["time"]) for r in rows)


def tick_floor(ts_ms: int, period_s: int) -> int:
    return ts_ms // (period_s * 1000) * period_s * 1000


def now_ms() -> int:
    return int(time.time() * 1000)


def log_ms(line: str) -> int:
    """The wall-clock time (ms) a service's log line was written at."""
    return int(datetime.fromisoformat(line.split(" ", 1)[0]).timestamp() * 1000)


def owned_shards(worker_log: str, at_ms: int) -> set[int]:
    """The shards a worker's log says it owned at `at_ms`: each "now owns shard" adds one,
    each "handed over" takes it away."""
    owned: set[int] = set()
    marker = "worker.shards: "
    for line in worker_log.splitlines():
        if marker not in line:
            continue
        if log_ms(line) > at_ms:
            break
        words = line.split(marker, 1)[1].split()
        if words[:3] == ["now", "owns", "shard"]:
            owned.add(int(words[3]))
        elif words[0] == "shard" and words[2:4] == ["handed", "over"]:
            owned.discard(int(words[1]))
    return owned
