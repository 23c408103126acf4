"""CPU time and memory of the processes of a benchmark, sampled in a background thread.

Uses psutil when it is installed (the `bench` extra) and reads Linux's /proc directly otherwise,
so the smoke test runs in the plain test environment too. Peak RSS is the kernel's high-water
mark (`VmHWM`), which catches peaks between samples; sampled RSS is the fallback.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

try:
    import psutil
except ImportError:  # pragma: no cover - depends on the environment
    psutil = None

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of `pid` so far (None once it is gone)."""
    if psutil is not None:
        try:
            t = psutil.Process(pid).cpu_times()
            return float(t.user + t.system)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def rss_mb(pid: int) -> float | None:
    """Resident memory of `pid` now, in MB (10^6 bytes)."""
    if psutil is not None:
        try:
            return psutil.Process(pid).memory_info().rss / 1e6
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * _PAGE / 1e6


def peak_rss_mb(pid: int) -> float | None:
    """The highest resident memory `pid` ever had (VmHWM), in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    except (OSError, ValueError):
        return None
    return None


def listener_pid(port: int) -> int | None:
    """The pid of the process listening on TCP `port` (e.g. RabbitMQ on 5672), if visible."""
    if psutil is None:
        return None
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                return int(conn.pid) if conn.pid else None
    except (psutil.AccessDenied, OSError):
        return None
    return None


def machine_cpu() -> dict[str, float]:
    """Cumulative CPU seconds of the whole machine by state, from /proc/stat (all cores)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return {}
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    return {n: int(v) / _CLK_TCK for n, v in zip(names, fields, strict=False)}


@dataclass
class Track:
    """What was seen of one process."""

    pid: int
    samples: list[tuple[float, float, float]] = field(default_factory=list)  # (t, cpu_s, rss)
    peak_rss_mb: float = 0.0
    marks: dict[str, float] = field(default_factory=dict)  # name -> cpu_s at that moment


class ProcSampler:
    """Samples CPU seconds and RSS of named processes every `interval_s` until `stop`."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.tracks: dict[str, Track] = {}
        self.machine_marks: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="procstats", daemon=True)

    def add(self, name: str, pid: int) -> None:
        with self._lock:
            self.tracks[name] = Track(pid)
        self._sample_one(self.tracks[name], time.monotonic())

    def start(self) -> None:
        self._thread.start()

    def _sample_one(self, track: Track, now: float) -> None:
        cpu = cpu_s(track.pid)
        rss = rss_mb(track.pid)
        if cpu is None or rss is None:
            return
        track.samples.append((now, cpu, rss))
        peak = peak_rss_mb(track.pid)
        track.peak_rss_mb = max(track.peak_rss_mb, rss, peak or 0.0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            now = time.monotonic()
            with self._lock:
                tracks = list(self.tracks.values())
            for track in tracks:
                self._sample_one(track, now)

    def mark(self, label: str) -> None:
        """Record every process's CPU seconds now under `label` (e.g. window start and end)."""
        now = time.monotonic()
        self.machine_marks[label] = machine_cpu()
        with self._lock:
            tracks = list(self.tracks.values())
        for track in tracks:
            self._sample_one(track, now)
            if track.samples:
                track.marks[label] = track.samples[-1][1]

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def cpu_between(self, name: str, start: str, end: str) -> float | None:
        """CPU seconds `name` used between two marks."""
        marks = self.tracks[name].marks
        if start not in marks or end not in marks:
            return None
        return marks[end] - marks[start]

    def machine_between(self, start: str, end: str) -> dict[str, float] | None:
        """How the machine's CPU time (all cores) was spent between two marks, in percent of
        the cores' capacity: busy (user, system, irq), steal (taken by the hypervisor), idle."""
        a, b = self.machine_marks.get(start), self.machine_marks.get(end)
        if not a or not b:
            return None
        d = {k: b[k] - a[k] for k in b if k in a}
        total = sum(d.values())
        if total <= 0:
            return None
        busy = sum(d.get(k, 0.0) for k in ("user", "nice", "system", "irq", "softirq"))
        return {
            "busy_pct": round(100 * busy / total, 1),
            "steal_pct": round(100 * d.get("steal", 0.0) / total, 1),
            "idle_pct": round(100 * (d.get("idle", 0.0) + d.get("iowait", 0.0)) / total, 1),
            "busy_cpu_s": round(busy, 2),
        }
