"""emm.health: progress sampled from a service's counters, and the one-line verdict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emm.health import STALE_S, Progress, check, judge

pytestmark = pytest.mark.timeout(10)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def progress(tmp_path: Path, clock: Clock, stall_s: float = 60) -> Progress:
    return Progress("writer", tmp_path / "writer.health", stall_s, clock=clock)


def test_idle_is_healthy_however_long(tmp_path: Path) -> None:
    clock = Clock()
    p = progress(tmp_path, clock)
    for _ in range(10):
        p.observe({"reading": (0, 0)})
        clock.now += 100
        assert judge(p.state(), clock.now) == (
            True,
            "writer: healthy: readings done 0, waiting 0",
        )


def test_work_waiting_without_progress_is_unhealthy_after_the_stall_limit(
    tmp_path: Path,
) -> None:
    clock = Clock()
    p = progress(tmp_path, clock)
    p.observe({"reading": (5, 0)})
    clock.now += 500  # idle for long: does not count against it
    p.observe({"reading": (5, 40)})
    clock.now += 60
    p.observe({"reading": (5, 40)})
    assert judge(p.state(), clock.now)[0] is True
    clock.now += 1
    assert judge(p.state(), clock.now) == (
        False,
        "writer: unhealthy: 40 reading(s) waiting and none done for 61 s "
        "(limit EMM_HEALTH_STALL_S=60 s)",
    )


def test_progress_while_busy_keeps_it_healthy(tmp_path: Path) -> None:
    clock = Clock()
    p = progress(tmp_path, clock, stall_s=10)
    for n in range(20):  # always busy, but something is done every 5 s
        p.observe({"job": (n, 30)})
        assert judge(p.state(), clock.now)[0] is True
        clock.now += 5


def test_a_file_not_rewritten_is_unhealthy(tmp_path: Path) -> None:
    clock = Clock()
    p = progress(tmp_path, clock)
    p.observe({"reading": (0, 0)})
    state = p.state()
    assert judge(state, clock.now + STALE_S)[0] is True
    assert judge(state, clock.now + STALE_S + 1) == (
        False,
        "writer: unhealthy: health file not rewritten for 16 s (limit 15 s): its event loop "
        "is blocked or it has stopped",
    )


def test_the_note_shows(tmp_path: Path) -> None:
    clock = Clock()
    p = Progress("scheduler", tmp_path / "s.health", 60, clock=clock)
    p.note = "standby: another scheduler publishes on this vhost"
    p.observe({"tick": (0, 0)})
    assert judge(p.state(), clock.now) == (
        True,
        "scheduler: healthy: standby: another scheduler publishes on this vhost; "
        "ticks done 0, waiting 0",
    )


def test_check_reads_the_file(tmp_path: Path) -> None:
    p = Progress("worker", tmp_path / "worker.health", 60)
    p.observe({"job": (3, 1)})
    p.write()
    assert check(p.path, "worker") == (True, "worker: healthy: jobs done 3, waiting 1")
    assert check(p.path, "writer") == (
        False,
        f"writer: unhealthy: {p.path} is the health file of worker",
    )
    missing = tmp_path / "none.health"
    assert check(missing, "worker") == (
        False,
        f"worker: unhealthy: no health file at {missing} (not running yet?)",
    )
    assert json.loads(p.path.read_text())["service"] == "worker"
    assert [f.name for f in tmp_path.iterdir()] == ["worker.health"]  # no partial left
