"""py-spy over the measured window: starting it on a component, and summarising where the
component spent its samples."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from bench import ROOT
from bench.procstats import ProcSampler
from bench.report import say


def start_py_spy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(binary).exists():
        say("py-spy not installed (pip install py-spy); no profile taken")
        return None
    argv = [binary, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds)))]
    argv += ["--rate", "100", "--format", "raw", "--nonblocking", "-o", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


_FRAME = re.compile(r"(?P<func>.*) \((?P<file>[^()]*?):\d+\)$")


_PLUMBING = re.compile(
    r"^(asyncio/|selectors\.py|emm/cli\.py|cli/|emm/service\.py|\w+/__main__\.py|emm$|<string>)"
)


def _frame_name(frame: str) -> str:
    """`function (module/file.py)` without line number and install prefix."""
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match["file"]
    root = str(ROOT) + "/"
    if path.startswith(root):
        path = path[len(root) :]
    for marker in ("site-packages/", "python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match['func']} ({path})"


def summarise_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Where a process spent its samples, from py-spy's collapsed stacks: the functions with
    most own samples, and the functions (outside the event loop) with most inclusive samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    try:
        text = path.read_text()
    except OSError:
        return {"error": f"no profile at {path}"}
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        n = int(count_text)
        total += n
        frames = [_frame_name(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for name in set(frames):
            file = name.rpartition("(")[2].rstrip(")")
            if not _PLUMBING.match(file):
                inclusive[name] += n
    if not total:
        return {"samples": 0}

    def pct(counter: Counter[str]) -> list[list[Any]]:
        return [[f, round(100 * n / total, 1)] for f, n in counter.most_common(top)]

    return {
        "samples": total,
        "file": str(path),
        "own_pct": pct(own),
        "inclusive_pct": pct(inclusive),
    }


Spies = dict[str, tuple[subprocess.Popen[bytes], Path]]


def start_spies(names: list[str], sampler: ProcSampler, folder: Path, seconds: float) -> Spies:
    """py-spy on each named component for `seconds`: {name: (py-spy process, its output)}."""
    spies: Spies = {}
    for name in names:
        track = sampler.tracks.get(name)
        if track is None:
            say(f"--py-spy {name}: no such component ({', '.join(sampler.tracks)})")
            continue
        out = folder / f"py-spy-{name}.txt"
        spy = start_py_spy(track.pid, seconds, out)
        if spy is not None:
            spies[name] = (spy, out)
    return spies


def finish_spies(spies: Spies, timeout_s: float) -> dict[str, Any]:
    """Wait for each py-spy to write its profile; {name: summary}."""
    for name, (spy, _out) in spies.items():
        try:
            spy.wait(timeout_s)
        except subprocess.TimeoutExpired:
            spy.kill()
            say(f"py-spy for {name} did not finish")
    return {name: summarise_profile(out) for name, (_spy, out) in spies.items()}
