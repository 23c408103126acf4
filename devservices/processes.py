"""The project's own commands as child processes, each with a log file in a folder.

Each child gets a free port of its own for its metrics (`EMM_METRICS_PORT`, unless the caller
sets one), so that several services on this host never compete for the default 9100;
`metrics_url(name)` is where a child serves them.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from devservices.net import free_port


def emm_command() -> list[str]:
    """The `emm` command: the installed console script beside this interpreter (the real entry
    point), else the `cli` package run as a module."""
    script = Path(sys.executable).parent / "emm"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli"]


class Processes:
    """Child processes with a log file each in `folder`; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, folder: Path, cwd: Path | None = None) -> None:
        self.folder = folder
        self.cwd = cwd or folder  # where the children run unless told otherwise
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.metrics_ports: dict[str, int] = {}

    def spawn(
        self, name: str, argv: list[str], env: dict[str, str], cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """Start `argv` with `env` added to this environment, output to `<name>.log`."""
        env = {"EMM_METRICS_PORT": str(free_port()), **env}
        self.metrics_ports[name] = int(env["EMM_METRICS_PORT"])
        with (self.folder / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                argv,
                env={**os.environ, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd or self.cwd,
            )
        self.procs[name] = proc
        return proc

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start `emm ARGS` (e.g. `["worker"]`)."""
        return self.spawn(name, [*emm_command(), *args], env)

    def metrics_url(self, name: str) -> str:
        """Where `name` serves its Prometheus metrics."""
        return f"http://127.0.0.1:{self.metrics_ports[name]}/metrics"

    def log(self, name: str) -> str:
        """What `name` has written so far ("" before it wrote anything)."""
        try:
            return (self.folder / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def wait_log(self, name: str, pattern: str, timeout_s: float) -> re.Match[str]:
        """Wait until `name`'s log matches `pattern`; fail early if the process exits."""
        deadline = time.monotonic() + timeout_s
        regex = re.compile(pattern)
        while True:
            match = regex.search(self.log(name))
            if match:
                return match
            proc = self.procs[name]
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with code {proc.returncode}:\n{self.log(name)[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{name}: no {pattern!r} in its log within {timeout_s:.0f} s:\n"
                    f"{self.log(name)[-3000:]}"
                )
            time.sleep(0.1)

    def stop(self, name: str, timeout_s: float = 15) -> int | None:
        """SIGTERM `name`, SIGKILL it if it has not exited after `timeout_s`; its exit code."""
        proc = self.procs.get(name)
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        return proc.returncode

    def stop_all(self) -> None:
        """Stop everything, the last started first."""
        for name in reversed(list(self.procs)):
            self.stop(name)
