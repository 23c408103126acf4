"""Local processes for tests and benchmarks: InfluxDB 1.x and VictoriaMetrics from their binaries
on loopback in a folder, free ports, and the project's own `emm` commands as child processes.

Used by the test fixtures when no `EMM_TEST_*` URL is given and no Docker engine answers, by the
benchmarks, and by `.ci/run` (`python -m tests.localservices DIR`) to start both servers before
the suite. Standard library only.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_run(count: int) -> int:
    """A first port of `count` consecutive free ports, below Linux's ephemeral range (32768+)
    so no outgoing connection takes one of them meanwhile."""
    import random

    rng = random.Random()
    for _ in range(100):
        base = rng.randrange(20000, 32700 - count)
        taken = False
        for port in range(base, base + count):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    taken = True
                    break
        if not taken:
            return base
    raise RuntimeError(f"no run of {count} free ports")


def wait_http(
    url: str, timeout_s: float = 30.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until `url` answers with any HTTP status below 500."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status < 500:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return
            last = exc
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s: {last}")


@dataclass
class Service:
    """A started process and the URL it serves."""

    url: str
    proc: subprocess.Popen[bytes]
    folder: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_influxdb_v1(folder: Path, port: int | None = None) -> Service:
    """InfluxDB 1.x (`influxd`) with its data in `folder`, HTTP on 127.0.0.1:`port`."""
    binary = shutil.which("influxd") or "/usr/bin/influxd"
    if not Path(binary).exists():
        raise FileNotFoundError("influxd not installed (Debian package influxdb)")
    port = port or free_port()
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "influxdb.conf"
    config.write_text(
        f"""reporting-disabled = true
bind-address = "127.0.0.1:{free_port()}"
[meta]
  dir = "{folder}/meta"
[data]
  dir = "{folder}/data"
  wal-dir = "{folder}/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:{port}"
  log-enabled = false
[monitor]
  store-enabled = false
"""
    )
    with (folder / "influxd.log").open("ab") as log:
        proc = subprocess.Popen(
            [binary, "-config", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/ping", proc=proc)
    return Service(url, proc, folder)


def start_victoriametrics(folder: Path, port: int | None = None) -> Service:
    """VictoriaMetrics (speaks InfluxDB's v2 write API) with its data in `folder`.

    Deduplication at 1 ms keeps one sample per series and timestamp, as InfluxDB keeps one point.
    """
    binary = shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics"
    if not Path(binary).exists():
        raise FileNotFoundError("victoria-metrics not installed (Debian package victoria-metrics)")
    port = port or free_port()
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "victoria-metrics.log").open("ab") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"-storageDataPath={folder}/data",
                f"-httpListenAddr=127.0.0.1:{port}",
                "-dedup.minScrapeInterval=1ms",
                "-search.latencyOffset=0s",
                "-search.disableCache",
                "-retentionPeriod=100y",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health", proc=proc)
    return Service(url, proc, folder)


def emm_command() -> list[str]:
    """The installed `emm` console script (the real entry point), or `python -m cli`."""
    script = Path(sys.executable).parent / "emm"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli"]


class Processes:
    """Child processes with a log file each in `folder`; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, folder: Path, cwd: Path | None = None) -> None:
        self.folder = folder
        self.cwd = cwd or folder  # where the children run unless told otherwise
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(
        self, name: str, argv: list[str], env: dict[str, str], cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """Start `argv` with `env` added to this environment, output to `<name>.log`."""
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

    def log(self, name: str) -> str:
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


def main(argv: list[str]) -> int:
    """`python -m tests.localservices DIR`: start both, leave them running, print their URLs.

    The output is shell assignments of `EMM_TEST_INFLUX_V1_URL` and `EMM_TEST_INFLUX_V2_URL`.
    """
    folder = Path(argv[0])
    v1 = start_influxdb_v1(folder / "influxdb")
    v2 = start_victoriametrics(folder / "victoria-metrics")
    print(f"EMM_TEST_INFLUX_V1_URL={v1.url}")
    print(f"EMM_TEST_INFLUX_V2_URL={v2.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
