"""Metrics and logs as an operator meets them: every service scraped while the pipeline reads the
simulator, the counters checked against the ticks published, and the services' lines read.

One pipeline for the module: three simulated SDM630s and one meter at a closed port, one worker,
a tick every 4 s, summaries every 3 s. The scheduler is stopped after a few ticks; the rest then
drains and every count is exact.
"""

from __future__ import annotations

import itertools
import re
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import psycopg2
import pytest

from broker import QUEUES
from devservices import postgres, rabbitmq
from devservices.net import free_port, wait_for
from devservices.processes import Processes
from devservices.readers import InfluxQL
from emm.log import amqp_where, postgres_where
from emm.profiles import shipped_profile
from tests.faults.harness import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

TICKS = 4  # ticks published before the scheduler is stopped
PERIOD_S = 4  # a shared RabbitMQ on a busy machine may take a second to confirm a tick's jobs
METERS = 3  # simulated; and one more at a closed port
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """The samples of a Prometheus text page by (name, labels)."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples: Samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, value = line.rsplit(" ", 1)
        name, _, labels = head.partition("{")
        pairs = re.findall(r'(\w+)="([^"]*)"', labels)
        samples[(name, frozenset(pairs))] = float(value)
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


@dataclass
class Run:
    pipeline: Pipeline
    processes: Processes
    scheduler: Samples  # scraped while it ran, between two ticks
    scraped_ticks: list[tuple[int, int]]  # (published, jobs) per tick its log had then
    worker: Samples
    writer: Samples
    simulator: Samples
    dead_port: int
    dead_id: int
    vhost_url: str
    dsn: str


def _add_dead_meter(dsn: str) -> tuple[int, int]:
    """A fourth meter, of the same type, at a port nothing listens on."""
    port = free_port()
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO energy_meters (host, port, slave_address, type, description) "
            "VALUES ('127.0.0.1', %s, 1, 'sdm630', 'dead') RETURNING id",
            (port,),
        )
        row = cur.fetchone()
    conn.close()
    assert row is not None
    return port, int(row[0])


def _ticks(log: str) -> list[tuple[int, int]]:
    """(jobs published, jobs) of each tick the scheduler's log reports."""
    ticks = []
    for line in log.splitlines():
        if match := re.search(r": tick \S+: (\d+) jobs published in ", line):
            ticks.append((int(match[1]), int(match[1])))
        elif match := re.search(r": only (\d+) of (\d+) jobs published ", line):
            ticks.append((int(match[1]), int(match[2])))
    return ticks


def _scrape_scheduler(processes: Processes) -> tuple[Samples, list[tuple[int, int]]]:
    """The scheduler's metrics once it published TICKS ticks, taken between two ticks, and
    the ticks its log reported then."""
    while True:
        before = _ticks(processes.log("scheduler"))
        if len(before) >= TICKS:
            samples = scrape(processes.metrics_url("scheduler"))
            if _ticks(processes.log("scheduler")) == before:
                return samples, before
        time.sleep(0.1)


@pytest.fixture(scope="module")
def run(
    postgres_server: str,
    amqp_server: str,
    influx_v1_server: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Run]:
    rabbitmq.delete_queues(amqp_server, ("emm.jobs", *QUEUES, "emm.jobs.dead", "emm.readings.dead"))
    database = f"metrics_{uuid.uuid4().hex[:8]}"
    influx = InfluxQL(influx_v1_server, database)
    influx.create_database()
    processes = Processes(tmp_path_factory.mktemp("metrics"))
    try:
        with postgres.fresh_database(postgres_server) as dsn:
            pipeline = Pipeline(
                processes,
                dsn,
                amqp_server,
                influx_v1_server,
                meters=METERS,
                period_s=PERIOD_S,
                workers=1,
                extra_env={"EMM_INFLUX_BUCKET": database, "EMM_LOG_SUMMARY_S": "3"},
            )
            pipeline.start_simulator()
            dead_port, dead_id = _add_dead_meter(dsn)
            pipeline.start_services()
            wait_for(lambda: len(_ticks(processes.log("scheduler"))) >= TICKS, 60, 0.2)
            scheduler, scraped_ticks = _scrape_scheduler(processes)
            assert processes.stop("scheduler") == 0
            jobs = sum(p for p, _n in _ticks(processes.log("scheduler")))

            def drained() -> tuple[Samples, Samples] | None:
                worker = scrape(processes.metrics_url("worker0"))
                writer = scrape(processes.metrics_url("writer"))
                consumed = value(worker, "emm_worker_jobs_consumed_total")
                late = value(worker, "emm_worker_jobs_late_total")
                reads = value(worker, "emm_worker_reads_total")
                published = value(worker, "emm_worker_readings_published_total")
                written = value(writer, "emm_writer_messages_written_total", kind="reading")
                done = consumed >= jobs and consumed == late + reads == late + published
                return (worker, writer) if done and written == published else None

            worker, writer = wait_for(drained, 30, 0.2)
            simulator = scrape(processes.metrics_url("simulator"))
            for name in ("worker0", "writer", "simulator"):
                assert processes.stop(name) == 0, processes.log(name)
            yield Run(
                pipeline,
                processes,
                scheduler,
                scraped_ticks,
                worker,
                writer,
                simulator,
                dead_port,
                dead_id,
                amqp_server,
                dsn,
            )
    finally:
        processes.stop_all()
        influx.drop_database()


def test_every_count_moves_by_the_meters_times_the_ticks(run: Run) -> None:
    scraped = run.scraped_ticks
    assert value(run.scheduler, "emm_scheduler_ticks_total") == len(scraped) >= TICKS
    published = value(run.scheduler, "emm_scheduler_jobs_published_total")
    assert published == sum(p for p, _ in scraped)
    unpublished = value(run.scheduler, "emm_scheduler_jobs_unpublished_total")
    assert unpublished == sum(n - p for p, n in scraped)
    assert all(n == METERS + 1 for _p, n in scraped)
    assert value(run.scheduler, "emm_scheduler_meters") == METERS + 1
    assert value(run.scheduler, "emm_scheduler_broker_connected") == 1

    ticks = _ticks(run.processes.log("scheduler"))  # all of them, once stopped
    jobs = sum(p for p, _ in ticks)
    w = run.worker
    consumed = value(w, "emm_worker_jobs_consumed_total")
    # Every job published is consumed: (meters) x (ticks) on a machine that keeps up. A job
    # whose confirm came after the scheduler gave up on it may still reach the worker.
    assert jobs <= consumed <= jobs + sum(n - p for p, n in ticks)
    # A job reaches the worker, or its gateway, more than half a tick late only on a machine
    # too busy to keep up: it is then counted, and never read.
    late = value(w, "emm_worker_jobs_late_total")
    assert value(w, "emm_worker_reads_total") == consumed - late
    assert value(w, "emm_worker_readings_published_total") == consumed - late
    assert value(w, "emm_worker_jobs_dead_lettered_total") == 0
    ok = value(w, "emm_worker_reads_total", outcome="ok", error_code="")
    # the dead meter: refused every tick until it is offline, then skipped or tried again
    unreachable = value(w, "emm_worker_reads_total", outcome="failed", error_code="unreachable")
    skipped = value(w, "emm_worker_reads_total", outcome="skipped_offline", error_code="offline")
    assert ok + unreachable + skipped == consumed - late
    assert ok >= METERS and unreachable >= 1
    assert value(w, "emm_worker_devices_up") == METERS
    assert value(w, "emm_worker_devices_offline") == (1 if unreachable >= 3 else 0)
    assert value(w, "emm_worker_outbox_readings") == 0
    assert value(w, "emm_worker_broker_connected") == 1
    assert value(w, "emm_worker_tick_lag_seconds") == 0  # idle: nothing in work

    # every request the simulator answered, the worker timed, under the simulator's gateway
    sim_gateway = f"127.0.0.1:{run.pipeline.sim_port}"
    answered = value(run.simulator, "emm_simulator_requests_total", outcome="answered")
    timed = value(w, "emm_worker_modbus_request_seconds_count", gateway=sim_gateway)
    assert timed == answered > 0 and answered % ok == 0  # the same requests every read
    assert value(run.simulator, "emm_simulator_requests_total", outcome="exception") == 0
    # a refused connection sends no request
    dead = f"127.0.0.1:{run.dead_port}"
    assert value(w, "emm_worker_modbus_request_seconds_count", gateway=dead) == 0

    readings = consumed - late
    assert value(run.writer, "emm_writer_messages_consumed_total", kind="reading") == readings
    assert value(run.writer, "emm_writer_messages_written_total", kind="reading") == readings
    assert value(run.writer, "emm_writer_messages_dead_lettered_total") == 0
    assert value(run.writer, "emm_writer_write_failures_total") == 0
    batches = value(run.writer, "emm_writer_write_seconds_count")
    assert batches == value(run.writer, "emm_writer_batch_messages_count") >= 1
    written = value(run.writer, "emm_writer_messages_written_total")
    assert value(run.writer, "emm_writer_batch_messages_sum") == written


def test_labels_name_gateways_never_meters_or_registers(run: Run) -> None:
    for samples in (run.scheduler, run.worker, run.writer, run.simulator):
        for name, labels in samples:
            if name.startswith("emm_"):
                assert {key for key, _ in labels} <= {
                    "gateway",
                    "outcome",
                    "error_code",
                    "kind",
                    "le",
                }


STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def _stamped(run: Run, name: str) -> list[tuple[datetime, str]]:
    """`name`'s log lines: their time (each checked to be UTC with a Z) and the rest."""
    lines = run.processes.log(name).splitlines()
    for line in lines:
        assert re.match(STAMP + " ", line), line
    return [
        (datetime.fromisoformat(stamp), rest)
        for stamp, rest in (line.split(" ", 1) for line in lines)
    ]


def _lines(run: Run, name: str) -> list[str]:
    """`name`'s log lines without their time stamps."""
    return [rest for _stamp, rest in _stamped(run, name)]


@pytest.mark.parametrize("name", ["scheduler", "worker0", "writer", "simulator"])
def test_each_log_is_clean(run: Run, name: str) -> None:
    stamped = _stamped(run, name)
    lines = [rest for _stamp, rest in stamped]
    assert not [line for line in lines if "py.warnings" in line or "Traceback" in line]
    twice = [
        a
        for (at, a), (bt, b) in itertools.pairwise(stamped)
        if a == b and (bt - at).total_seconds() < 1
    ]
    assert not twice, "a line repeated"
    assert not [line for line in lines if ":guest@" in line]  # no password
    if name != "simulator":
        assert any(amqp_where(run.vhost_url) in line for line in lines)
    assert [line for line in lines if " summary, last " in line], "no summary line"


def test_the_dead_meter_is_one_line_when_it_fails_not_one_per_tick(run: Run) -> None:
    profile = shipped_profile("sdm630")
    assert profile is not None
    registers = len(profile.registers)
    lines = [
        line
        for line in _lines(run, "worker0")
        if line.startswith("WARNING ") and f"meter {run.dead_id} " in line
    ]
    port = run.dead_port
    tick = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00"
    assert re.fullmatch(
        rf"WARNING worker worker\.consumer: meter {run.dead_id} \(sdm630 at 127\.0\.0\.1:{port} "
        rf"unit 1\) tick ({tick}): cannot connect to 127\.0\.0\.1:{port}(?:: .+)?; none of its "
        rf"{registers} registers read meter_id={run.dead_id} gateway=127\.0\.0\.1:{port} "
        rf"tick=\1 error_code=unreachable",
        lines[0],
    )
    # then nothing until it goes offline (health's line), though it failed every tick
    unreachable = value(run.worker, "emm_worker_reads_total", error_code="unreachable")
    if unreachable >= 3:
        assert lines[1].startswith(
            f"WARNING worker worker.health: meter {run.dead_id} (127.0.0.1:{port} unit 1) "
            "offline after 3 failed ticks (unreachable)"
        )
    assert len(lines) == 1 + (unreachable >= 3), lines


def test_start_first_success_and_stop_lines(run: Run) -> None:
    scheduler = _lines(run, "scheduler")
    assert any(f"; {postgres_where(run.dsn)};" in line for line in scheduler)
    assert len([line for line in scheduler if line.endswith(" (the first)")]) == 1
    ticks = _ticks(run.processes.log("scheduler"))
    jobs = sum(p for p, _ in ticks)
    unpublished = sum(n - p for p, n in ticks)
    [stopped] = [line for line in scheduler if "scheduler stopped" in line]
    assert re.fullmatch(
        rf"INFO scheduler scheduler\.app: scheduler stopped after \d+ s: ticks {len(ticks)}, "
        rf"jobs published {jobs}, unpublished {unpublished}",
        stopped,
    )

    worker = _lines(run, "worker0")
    assert len([line for line in worker if "first job done: the reading of meter " in line]) == 1
    [stopped] = [line for line in worker if "worker stopped" in line]
    w = run.worker
    consumed = int(value(w, "emm_worker_jobs_consumed_total"))
    late = int(value(w, "emm_worker_jobs_late_total"))
    ok = int(value(w, "emm_worker_reads_total", outcome="ok"))
    failed = int(value(w, "emm_worker_reads_total", outcome="failed"))
    skipped = int(value(w, "emm_worker_reads_total", outcome="skipped_offline"))
    errors = f", error offline {skipped}" if skipped else ""
    assert re.fullmatch(
        rf"INFO worker worker\.app: worker stopped after \d+ s: jobs {consumed}, late {late}, "
        rf"dead-lettered 0, reads ok {ok}, reads partial 0, reads failed {failed}, "
        rf"reads skipped_offline {skipped}, readings published {consumed - late}{errors}, "
        rf"error unreachable {failed}",
        stopped,
    )

    simulator = _lines(run, "simulator")
    assert len([line for line in simulator if "first read answered (" in line]) == 1

    writer = _lines(run, "writer")
    assert any(f"(API v1, database {run.pipeline.env['EMM_INFLUX_BUCKET']})" in x for x in writer)
    assert len([line for line in writer if "first batch written: " in line]) == 1
    [stopped] = [line for line in writer if "writer stopped" in line]
    written = consumed - late
    assert re.fullmatch(
        rf"INFO writer writer\.app: writer stopped after \d+ s: readings consumed {written}, "
        rf"readings written {written}, gateway statuses written \d+, batches \d+, "
        rf"dead-lettered 0, write failures 0",
        stopped,
    )
