"""scripts/up: the whole stack without Docker, for a few 2 s ticks, then Ctrl-C.

PostgreSQL and RabbitMQ are the running ones (a fresh database, a private vhost), which the
script must use and leave running; InfluxDB it starts itself, and must stop.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import psycopg2
import pytest

from devservices.net import port_open, wait_for
from devservices.readers import InfluxQL
from tests.helpers import ROOT, unavailable

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=2):
            return True
    except (OSError, urllib.error.URLError):
        return False


def test_up_runs_the_stack_and_stops_what_it_started(
    pg_dsn: str, amqp_url: str, tmp_path: Path
) -> None:
    if not (Path("/usr/bin/influxd").exists() or Path("/usr/bin/victoria-metrics").exists()):
        unavailable("neither influxd nor victoria-metrics is installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMM_")}
    env |= {
        "EMM_POSTGRES_DSN": pg_dsn,
        "EMM_AMQP_URL": amqp_url,
        "EMM_READ_CRON": "*/2 * * * * *",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "scripts" / "up"),
            "--workers",
            "2",
            "--no-install",
            "--dir",
            str(tmp_path / "up"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []

    def collect() -> None:
        assert proc.stdout is not None
        lines.extend(proc.stdout)

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()

    def output() -> str:
        return "".join(lines)

    try:
        found = wait_for(
            lambda: re.search(r"== InfluxDB[^:]*: (http://\S+)", output()) or proc.poll(), 45
        )
        assert isinstance(found, re.Match), output()
        influx_url = found.group(1)
        influx = InfluxQL(influx_url, "energy")
        # A few ticks stored: the virtual meter's points at three different tick times.
        wait_for(lambda: len(influx.query("SELECT * FROM energy")) >= 3 or proc.poll(), 30, 0.5)
        points = influx.query("SELECT * FROM energy")
        assert len(points) >= 3, output()
        assert len({p["time"] for p in points}) == len(points)
        assert all(p["time"] % 2000 == 0 for p in points)  # on the 2 s ticks
        # each service serves its metrics on a port of its own, listed at start
        metrics = dict(re.findall(r"== metrics of (\S+): (http://\S+)", output()))
        assert sorted(metrics) == ["scheduler", "simulator", "worker-1", "worker-2", "writer"]
        assert len(set(metrics.values())) == len(metrics)
        with urllib.request.urlopen(metrics["scheduler"], timeout=5) as page:
            scraped = page.read().decode()
        assert re.search(r"^emm_scheduler_jobs_published_total [1-9]", scraped, re.M), scraped
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(40)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        reader.join(5)
        assert proc.stdout is not None
        proc.stdout.close()
    text = output()
    assert code == 0, text
    assert "PostgreSQL: using EMM_POSTGRES_DSN" in text
    assert "RabbitMQ: using EMM_AMQP_URL" in text
    for name in ("migrate", "simulator", "scheduler", "worker-1", "worker-2", "writer"):
        assert f"\n[{name}] " in text, name
    assert "stopped everything started here" in text
    # What it started is gone (the servers and the services), what it found is still there.
    assert not _answers(influx_url)
    simulator = re.search(r"simulator \(Modbus TCP\): 127.0.0.1:(\d+)", text)
    assert simulator is not None
    assert not port_open("127.0.0.1", int(simulator.group(1)))
    conn = psycopg2.connect(pg_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM energy_meters")
            assert cur.fetchone() == (1,)  # the seeded virtual meter
    finally:
        conn.close()
