"""InfluxDB 1.x and VictoriaMetrics started from their Debian packages' binaries, on loopback,
with their data in a folder of the caller's."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from devservices.net import free_port, wait_http
from devservices.readers import InfluxQL


@dataclass
class Service:
    """A started server process and the URL it serves."""

    url: str
    proc: subprocess.Popen[bytes]
    folder: Path
    binary: Path

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited after 10 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_influxdb_v1(
    folder: Path,
    port: int | None = None,
    *,
    max_body_bytes: int | None = None,
    auth_enabled: bool = False,
) -> Service:
    """InfluxDB 1.x (`influxd`) with its data in `folder`, HTTP on 127.0.0.1:`port`, taking
    write bodies of at most `max_body_bytes` (default: the server's, 25 MB) before it answers
    413; with `auth_enabled` every request needs a user (the first one made must be an admin,
    and may be made without)."""
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
{f"  max-body-size = {max_body_bytes}" if max_body_bytes else ""}
{"  auth-enabled = true" if auth_enabled else ""}
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
    return Service(url, proc, folder, Path(binary))


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
    return Service(url, proc, folder, Path(binary))


class PrivateInfluxDB(InfluxQL):
    """A private InfluxDB 1.x with one database, on a port of its own: stopped and started
    again on the same port and data folder, it makes an outage."""

    def __init__(self, folder: Path, database: str = "energy") -> None:
        self.folder = folder
        self.port = free_port()
        self.service: Service | None = None
        super().__init__(f"http://127.0.0.1:{self.port}", database, timeout_s=30)

    def start(self) -> None:
        """Start the server and create the database (again)."""
        self.service = start_influxdb_v1(self.folder, self.port)
        self.create_database()

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
            self.service = None
