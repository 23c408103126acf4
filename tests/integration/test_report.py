"""`emm report completeness`, the real command, against readings the writer's code stored in
InfluxDB 1.x over the last 40 minutes (one meter complete, one with a gap, one gone quiet)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from devservices.readers import InfluxQL
from emm.messages import Meter, Reading, Status
from emm.schedule import CronSchedule
from writer.counters import CounterWatch, tick_counter
from writer.lines import delta_lines, reading_lines

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

MINUTE_MS = 60_000


def store(influx: InfluxQL, ticks: dict[int, list[int]]) -> None:
    watch = CounterWatch(tick_counter(CronSchedule("* * * * *").next_after))
    lines = []
    for meter_id, meter_ticks in ticks.items():
        meter = Meter(meter_id, "127.0.0.1", 502, 1, "sdm630")
        for tick in meter_ticks:
            reading = Reading(
                meter,
                tick,
                {"importActiveEnergy": tick / 3_600_000},
                Status(True, latency_ms=3.0),
                counters=("importActiveEnergy",),
            )
            seen = watch.observe(reading)
            lines += reading_lines(reading, seen.resets) + delta_lines(meter, seen.deltas)
    influx.write("\n".join(lines))


def test_completeness_lists_the_meters_below_100_percent(influx_v1: InfluxQL) -> None:
    now = int(time.time() * 1000) // MINUTE_MS * MINUTE_MS
    every = list(range(now - 40 * MINUTE_MS, now + 5 * MINUTE_MS, MINUTE_MS))  # a little ahead
    gap = set(range(now - 20 * MINUTE_MS, now - 15 * MINUTE_MS, MINUTE_MS))
    store(
        influx_v1,
        {
            201: every,
            202: [t for t in every if t not in gap],
            203: [t for t in every if t <= now - 4 * MINUTE_MS],
        },
    )
    env = {
        **os.environ,
        "EMM_INFLUX_URL": influx_v1.url,
        "EMM_INFLUX_API": "v1",
        "EMM_INFLUX_BUCKET": influx_v1.database,
        "EMM_READ_CRON": "* * * * *",
    }
    done = subprocess.run(
        [sys.executable, "-m", "cli", "report", "completeness", "--since", "30m"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    expected = int(re.match(r"(\d+) ticks since", out).group(1))  # type: ignore[union-attr]
    assert expected in (30, 31)  # a tick on the window's start or not
    assert "meter 201" not in out
    assert f"meter 202: {expected - 5}/{expected} ticks stored" in out
    assert "  5 ticks missed before " in out
    quiet = re.search(r"meter 203: (\d+)/\d+ ticks stored.*\n  (\d+) ticks missed since ", out)
    assert quiet is not None, out
    assert int(quiet.group(1)) + int(quiet.group(2)) == expected
