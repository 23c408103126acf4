"""PostgreSQL: a fresh database on a server the caller names, or a private server of one's own
to stop and start (an outage)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

from devservices.net import free_port

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def with_dbname(dsn: str, dbname: str) -> str:
    """`dsn` (a URL) naming another database."""
    parts = urllib.parse.urlsplit(dsn)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{dbname}"))


@contextlib.contextmanager
def fresh_database(admin_dsn: str, prefix: str = "emm_test") -> Iterator[str]:
    """A new, empty database on `admin_dsn`'s server (its DSN), dropped afterwards."""
    import psycopg2

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(admin_dsn)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        try:
            yield with_dbname(admin_dsn, name)
        finally:
            with admin.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found else None


class PrivatePostgres:
    """A PostgreSQL server of one's own, run as the `postgres` user, to stop and start."""

    def __init__(self) -> None:
        self.port = free_port()
        # The server runs as `postgres`, which cannot enter root's temporary folders.
        self.folder = Path(tempfile.mkdtemp(prefix="emm-pg-"))
        self.data = self.folder / "data"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @staticmethod
    def available() -> str | None:
        """Why a private server cannot be started here, or None."""
        if _postgres_bin() is None:
            return "PostgreSQL server binaries are not installed"
        if os.geteuid() != 0 or shutil.which("runuser") is None:
            return "a private PostgreSQL needs root and runuser (it runs as user postgres)"
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "there is no postgres user"
        return None

    def _as_postgres(self, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, timeout=120
        )

    def start(self) -> None:
        """Start the server (creating its cluster the first time); returns once it accepts."""
        bin_dir = _postgres_bin()
        assert bin_dir is not None
        if not self.data.exists():
            shutil.chown(self.folder, "postgres", "postgres")
            self._as_postgres(
                str(bin_dir / "initdb"),
                "-D",
                str(self.data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            )
        self._as_postgres(
            str(bin_dir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.folder / "log"),
            "-w",
            "-o",
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c fsync=off",
            "start",
        )

    def stop(self) -> None:
        """A fast shutdown: sessions are disconnected."""
        bin_dir = _postgres_bin()
        assert bin_dir is not None
        self._as_postgres(str(bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        """Stop it if it runs, and delete its folder."""
        with contextlib.suppress(Exception):
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
