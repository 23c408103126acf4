"""The pipeline benchmark runs end to end on a tiny load and loses nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devservices.net import port_open
from tests.helpers import ROOT, unavailable

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

KEYS = {
    "meter_reads_per_s",
    "modbus_requests_per_s",
    "requests_per_meter_read",
    "planner_min_requests_per_meter_read",
    "tick_to_stored_ms",
    "queue_depth",
    "components",
    "readings_lost",
    "readings_expected",
    "ceiling_meter_reads_per_s",
    "pipeline_vs_ceiling",
    "naive_meter_reads_per_s",
    "pipeline_vs_naive",
}


def _require_services() -> None:
    if not port_open("127.0.0.1", 5432):
        unavailable("no PostgreSQL on 127.0.0.1:5432")
    if not port_open("127.0.0.1", 5672):
        unavailable("no RabbitMQ on 127.0.0.1:5672")
    if shutil.which("rabbitmqctl") is None or os.geteuid() != 0:
        unavailable("the benchmark needs rabbitmqctl (as root) for its private vhost")
    if not (shutil.which("influxd") or Path("/usr/bin/influxd").exists()):
        unavailable("influxd not installed (Debian package influxdb)")


def test_small_pipeline_run_reports_every_figure_and_loses_nothing(tmp_path: Path) -> None:
    _require_services()
    out = tmp_path / "run.json"
    argv = [sys.executable, "-m", "bench.pipeline", "--meters", "5", "--workers", "1"]
    # Every 2 s rather than every second: the worker skips jobs that reach it more than half a
    # tick late, and a loaded CI machine should not turn that into a lost reading.
    argv += ["--cron", "*/2 * * * * *", "--duration-s", "12", "--warmup-s", "2"]
    argv += ["--ceiling-s", "2", "--naive-s", "2", "--out", str(out)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert json.loads(out.read_text()) == result
    assert result.keys() >= KEYS, KEYS - result.keys()
    assert result["readings_expected"] == 5 * result["config"]["ticks"] > 0
    assert result["readings_lost"] == 0, result["stored_per_tick"]
    assert result["requests_per_meter_read"] == result["planner_min_requests_per_meter_read"]
    assert result["tick_to_stored_ms"]["p99"] is not None
    for name in ("scheduler", "worker-0", "writer", "simulator"):
        figures = result["components"][name]
        assert figures["peak_rss_mb"] > 0
        assert figures["cpu_s_per_1000_readings"] is not None
    assert result["ceiling_meter_reads_per_s"] > 0
    assert result["naive"]["requests_per_meter_read"] > result["requests_per_meter_read"]
