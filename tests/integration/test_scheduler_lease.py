"""Two schedulers on one vhost by mistake: each tick is published once, and the second takes
over when the first dies."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from devservices.processes import Processes, emm_command
from emm.messages import Job
from tests.integration.amqp_util import JobCollector

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

PERIOD_MS = 1000


def test_a_second_scheduler_stands_by_and_takes_over(
    pg_dsn: str, amqp_url: str, processes: Processes, tmp_path: Path
) -> None:
    migrated = subprocess.run(
        [*emm_command(), "migrate", "--seed-host", "127.0.0.1", "--seed-port", "1502"],
        env={**os.environ, "EMM_POSTGRES_DSN": pg_dsn},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert migrated.returncode == 0, migrated.stderr  # one meter, the seeded virtual one
    env = {"EMM_POSTGRES_DSN": pg_dsn, "EMM_AMQP_URL": amqp_url, "EMM_READ_CRON": "* * * * * *"}
    with JobCollector(amqp_url) as jobs:
        first_env = {**env, "EMM_HEALTH_FILE": str(tmp_path / "first.health")}
        processes.start("first", ["scheduler"], first_env)
        processes.wait_log("first", r"tick \S+: 1 jobs published", 30)
        second_health = tmp_path / "second.health"
        processes.start("second", ["scheduler"], {**env, "EMM_HEALTH_FILE": str(second_health)})
        processes.wait_log("second", "another scheduler is publishing on this vhost", 30)
        time.sleep(3)
        assert "jobs published" not in processes.log("second")
        probe = subprocess.run(
            [*emm_command(), "health", "scheduler", "--file", str(second_health)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert (probe.returncode, probe.stdout) == (
            0,
            "scheduler: healthy: standby: another scheduler publishes on this vhost; "
            "ticks done 0, waiting 0\n",
        )

        processes.procs["first"].send_signal(signal.SIGKILL)
        processes.procs["first"].wait(10)
        killed_ms = int(time.time() * 1000)
        processes.wait_log("second", "the other scheduler is gone", 10)
        processes.wait_log("second", r"tick \S+: 1 jobs published", 10)
        time.sleep(2.5)
        processes.stop("second")

    ticks = Counter(Job.decode(body).tick_ms for body in jobs.bodies)
    assert [t for t, n in ticks.items() if n != 1] == [], "ticks published more than once"
    standby = processes.log("second")
    assert standby.count("another scheduler is publishing on this vhost") == 1
    after = sorted(t for t in ticks if t > killed_ms)
    # the second scheduler publishes from the first or second tick after the kill, then
    # every tick
    assert after and after[0] <= killed_ms + 2 * PERIOD_MS, (killed_ms, after)
    assert after == list(range(after[0], after[-1] + 1, PERIOD_MS))
    before = sorted(t for t in ticks if t <= killed_ms)
    assert before == list(range(before[0], before[-1] + 1, PERIOD_MS))
