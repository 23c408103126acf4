"""SIGTERM stops a service promptly in any state, and `emm health` tells progress from a live
process: each service as its own process, as compose or Kubernetes runs it."""

from __future__ import annotations

import http.server
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import READINGS
from devservices.net import free_port, wait_for
from devservices.processes import Processes, emm_command
from emm.messages import Meter, Reading, Status
from tests.integration.amqp_util import publish

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def health(service: str, path: Path) -> tuple[int, str]:
    """`emm health SERVICE --file PATH`: its exit code and its line."""
    done = subprocess.run(
        [*emm_command(), "health", service, "--file", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.returncode, done.stdout.strip()


def stop_timed(processes: Processes, name: str) -> tuple[int | None, float]:
    """SIGTERM `name`; its exit code and how long it took to exit."""
    started = time.monotonic()
    code = processes.stop(name, timeout_s=30)
    return code, time.monotonic() - started


@pytest.mark.parametrize("service", ["scheduler", "worker", "writer"])
def test_sigterm_while_waiting_for_rabbitmq_at_start(
    service: str, processes: Processes, tmp_path: Path
) -> None:
    env = {
        "EMM_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F",  # nobody there
        "EMM_HEALTH_FILE": str(tmp_path / f"{service}.health"),
    }
    processes.start(service, [service], env)
    # waiting for RabbitMQ (the writer first waits for InfluxDB, also not there: the same)
    processes.wait_log(service, r"(RabbitMQ|InfluxDB) at \S+ not reachable", 20)
    code, took_s = stop_timed(processes, service)
    assert code == 0, processes.log(service)
    assert took_s < 3, f"{service} took {took_s:.1f} s to stop"
    assert not (tmp_path / f"{service}.health").exists()  # a stopped service is not healthy


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers: a server that hangs."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    closing = threading.Event()

    def accept() -> None:
        while not closing.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        closing.set()
        server.close()
        for conn in held:
            conn.close()


class _FakeInfluxDB(http.server.BaseHTTPRequestHandler):
    """Answers /ping (as a server without InfluxDB's version header); a write either hangs
    until the test ends or gets `write_status`."""

    write_status: int | None = None  # None: never answer
    released = threading.Event()

    def do_GET(self) -> None:
        self.send_response(204)
        self.end_headers()

    def do_POST(self) -> None:
        if self.write_status is None:
            self.released.wait(60)
            return
        self.send_response(self.write_status)
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


def fake_influxdb(write_status: int | None) -> Iterator[int]:
    """A server that passes the writer's start-up check, then hangs or fails every write."""
    handler = type("Handler", (_FakeInfluxDB,), {"write_status": write_status})
    handler.released = threading.Event()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        handler.released.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def hanging_influxdb() -> Iterator[int]:
    yield from fake_influxdb(None)


@pytest.fixture
def failing_influxdb() -> Iterator[int]:
    yield from fake_influxdb(503)


def test_a_writer_whose_writes_hang_is_unhealthy_and_still_stops(
    amqp_url: str, hanging_influxdb: int, processes: Processes, tmp_path: Path
) -> None:
    path = tmp_path / "writer.health"
    env = {
        "EMM_AMQP_URL": amqp_url,
        "EMM_INFLUX_URL": f"http://127.0.0.1:{hanging_influxdb}",
        "EMM_INFLUX_API": "v1",
        "EMM_INFLUX_TIMEOUT_S": "4",
        "EMM_WRITER_FLUSH_INTERVAL_MS": "50",
        "EMM_HEALTH_FILE": str(path),
        "EMM_HEALTH_STALL_S": "2",
    }
    processes.start("writer", ["writer"], env)
    processes.wait_log("writer", "writer started", 20)
    wait_for(path.exists, 5)
    assert health("writer", path) == (0, "writer: healthy: readings done 0, waiting 0")

    tick_ms = (int(time.time()) // 60 * 60 - 60) * 1000
    meter = Meter(1, "127.0.0.1", 502, 1, "sdm630")
    reading = Reading(meter, tick_ms, {"voltage_l1": 230.0}, Status(up=True))
    publish(amqp_url, READINGS, [reading.encode()])

    code, line = wait_for(lambda: (r := health("writer", path))[0] == 1 and r, 15)
    assert line.startswith("writer: unhealthy: 1 reading(s) waiting and none done for "), line
    assert line.endswith(" s (limit EMM_HEALTH_STALL_S=2 s)"), line
    assert processes.procs["writer"].poll() is None  # alive, and yet unhealthy

    # A write hangs in InfluxDB's socket: the stop waits for it at most EMM_INFLUX_TIMEOUT_S.
    code, took_s = stop_timed(processes, "writer")
    assert code == 0, processes.log("writer")
    assert took_s < 8, f"the writer took {took_s:.1f} s to stop"
    assert health("writer", path) == (
        1,
        f"writer: unhealthy: no health file at {path} (not running yet?)",
    )


def test_sigterm_between_influxdb_retries(
    amqp_url: str, failing_influxdb: int, processes: Processes, tmp_path: Path
) -> None:
    env = {
        "EMM_AMQP_URL": amqp_url,
        "EMM_INFLUX_URL": f"http://127.0.0.1:{failing_influxdb}",  # every write: 503
        "EMM_INFLUX_API": "v1",
        "EMM_WRITER_FLUSH_INTERVAL_MS": "50",
        "EMM_WRITER_RETRY_MAX_S": "600",  # the pauses between retries grow long
        "EMM_HEALTH_FILE": str(tmp_path / "writer.health"),
    }
    processes.start("writer", ["writer"], env)
    processes.wait_log("writer", "writer started", 20)
    tick_ms = (int(time.time()) // 60 * 60 - 60) * 1000
    reading = Reading(Meter(1, "127.0.0.1", 502, 1, "sdm630"), tick_ms, {"v": 1.0}, Status(True))
    publish(amqp_url, READINGS, [reading.encode()])
    # held, and InfluxDB being retried (the counters' history first, then the write)
    wait_for(lambda: '"waiting": 1' in (tmp_path / "writer.health").read_text(), 20)
    time.sleep(2)
    code, took_s = stop_timed(processes, "writer")
    assert code == 0, processes.log("writer")
    assert took_s < 3, f"the writer took {took_s:.1f} s to stop"


@pytest.mark.timeout(90)  # each load of the configuration waits out a 5 s connect timeout
def test_a_scheduler_that_cannot_publish_its_due_tick_is_unhealthy(
    amqp_url: str, silent_port: int, processes: Processes, tmp_path: Path
) -> None:
    path = tmp_path / "scheduler.health"
    env = {
        "EMM_AMQP_URL": amqp_url,
        # PostgreSQL accepting connections and never answering: no tick can be loaded
        "EMM_POSTGRES_DSN": f"postgresql://emm@127.0.0.1:{silent_port}/emm",
        "EMM_READ_CRON": "* * * * * *",
        "EMM_HEALTH_FILE": str(path),
        "EMM_HEALTH_STALL_S": "2",
    }
    processes.start("scheduler", ["scheduler"], env)
    processes.wait_log("scheduler", "scheduler started", 20)
    code, line = wait_for(lambda: (r := health("scheduler", path))[0] == 1 and r, 30)
    assert line.startswith("scheduler: unhealthy: 1 tick(s) waiting and none done for "), line
    assert line.endswith(" s (limit EMM_HEALTH_STALL_S=2 s)"), line
    code, took_s = stop_timed(processes, "scheduler")
    assert code == 0, processes.log("scheduler")
    assert took_s < 8, f"the scheduler took {took_s:.1f} s to stop"  # a connection attempt: 5 s
