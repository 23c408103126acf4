"""Health: each service's progress, rewritten to a small file, judged by `emm health SERVICE`.

A live process is not a healthy one: a writer whose flush hangs, or a worker whose consumer is
stuck, still runs. So each service counts its own progress, per kind, and says how much work of
that kind waits; a service is unhealthy when work waits and none of it was done for
`EMM_HEALTH_STALL_S`. Idle is healthy: no work waiting, nothing to do. What counts per service:

    service    kind      work waiting                              progress
    scheduler  tick      a due tick not yet published whole        a tick's jobs all confirmed
    worker     job       jobs delivered and not settled            a job settled
               reading   readings waiting in the outbox            a reading confirmed
    writer     reading   readings held unacked                     a reading settled (written,
                                                                   or dead-lettered)
    simulator  -         none: it only answers                     its event loop turning

Every service also rewrites the file every `BEAT_S` from its event loop: a file older than
`STALE_S` says the loop is blocked or the process is gone. A standby scheduler (another
instance holds the lease) has no work and is healthy.

The file is JSON, replaced in one step; times in it are `time.monotonic()` seconds, which on
Linux are the same clock for every process of the machine (the probe runs beside the service).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BEAT_S = 2.0  # how often a service rewrites its health file
STALE_S = 15.0  # a file older than this: the service's event loop is not turning

Sample = Mapping[str, tuple[int, int]]
"""Per kind of progress: (how many done so far, how many waiting now)."""


def default_path(service: str) -> Path:
    """Where `service` writes its health file when `EMM_HEALTH_FILE` is not set."""
    return Path(tempfile.gettempdir()) / f"emm-{service}.health"


@dataclass(slots=True)
class _Track:
    """One kind of progress: the count last seen, when it last moved, since when work waits."""

    done: int = 0
    waiting: int = 0
    progress_at: float | None = None
    waiting_since: float | None = None


class Progress:
    """A service's progress, sampled from its counters and written to its health file."""

    def __init__(
        self,
        service: str,
        path: Path,
        stall_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.path = path
        self.stall_s = stall_s
        self.clock = clock
        self.note = ""  # what the service is doing, for people ("standby", "stopping")
        self._tracks: dict[str, _Track] = {}

    def observe(self, sample: Sample) -> None:
        """Take the counters of now: a count that moved is progress; waiting work starts a
        clock that progress resets and an empty queue stops."""
        now = self.clock()
        for kind, (done, waiting) in sample.items():
            track = self._tracks.setdefault(kind, _Track(done=done))
            if done != track.done:
                track.done, track.progress_at = done, now
            track.waiting = waiting
            if waiting <= 0:
                track.waiting_since = None
            elif track.waiting_since is None:
                track.waiting_since = now

    def state(self) -> dict[str, Any]:
        """What the health file holds."""
        return {
            "service": self.service,
            "pid": os.getpid(),
            "written_at": self.clock(),
            "stall_s": self.stall_s,
            "stale_s": STALE_S,
            "note": self.note,
            "progress": {
                kind: {
                    "done": t.done,
                    "waiting": t.waiting,
                    "progress_at": t.progress_at,
                    "waiting_since": t.waiting_since,
                }
                for kind, t in self._tracks.items()
            },
        }

    def write(self) -> None:
        """Replace the health file in one step (a probe never reads half of one)."""
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        partial.write_text(json.dumps(self.state()))
        os.replace(partial, self.path)

    async def run(self, stop: asyncio.Event, sample: Callable[[], Sample]) -> None:
        """Sample and rewrite the file every `BEAT_S` until `stop`; then remove it (a stopped
        service is not healthy)."""
        try:
            while not stop.is_set():
                self.observe(sample())
                with contextlib.suppress(OSError):  # a full disk must not stop the service
                    self.write()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=BEAT_S)
        finally:
            with contextlib.suppress(OSError):
                self.path.unlink()


def judge(state: Mapping[str, Any], now: float) -> tuple[bool, str]:
    """Whether the service whose health file holds `state` is healthy at `now`, and why, in one
    line."""
    service = state.get("service", "?")
    age_s = now - float(state["written_at"])
    stale_s = float(state.get("stale_s", STALE_S))
    if age_s > stale_s:
        return False, (
            f"{service}: unhealthy: health file not rewritten for {age_s:.0f} s (limit "
            f"{stale_s:g} s): its event loop is blocked or it has stopped"
        )
    stall_s = float(state["stall_s"])
    parts = []
    for kind, track in sorted(state.get("progress", {}).items()):
        waiting = int(track["waiting"])
        since = track["waiting_since"]
        last = track["progress_at"]
        if waiting > 0 and since is not None:
            idle_s = now - max(float(since), float(last) if last is not None else 0.0)
            if idle_s > stall_s:
                return False, (
                    f"{service}: unhealthy: {waiting} {kind}(s) waiting and none done for "
                    f"{idle_s:.0f} s (limit EMM_HEALTH_STALL_S={stall_s:g} s)"
                )
        parts.append(f"{kind}s done {track['done']}, waiting {waiting}")
    note = state.get("note") or ""
    summary = "; ".join(([note] if note else []) + parts)
    return True, f"{service}: healthy" + (f": {summary}" if summary else "")


def check(path: Path, service: str, now: float | None = None) -> tuple[bool, str]:
    """`judge` the health file at `path`; unhealthy when there is none (not started, or
    stopped) or it names another service."""
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return False, f"{service}: unhealthy: no health file at {path} (not running yet?)"
    except (OSError, ValueError) as exc:
        return False, f"{service}: unhealthy: cannot read the health file {path}: {exc}"
    if state.get("service") != service:
        return False, f"{service}: unhealthy: {path} is the health file of {state.get('service')}"
    return judge(state, time.monotonic() if now is None else now)
