"""The scheduler's view of PostgreSQL: the configuration, and the last good one for outages."""

from __future__ import annotations

import logging
import time

from emm import retry
from emm.config import LoadedConfig
from emm.errors import DatabaseError
from postgres.config import load_config
from postgres.connection import Connection, close_quietly, describe, open_connection

log = logging.getLogger(__name__)


class ConfigRepo:
    """Loads meters and registers each tick; falls back to the last load when PostgreSQL is down.

    An outage is logged when it starts and when it ends; each problem of the configuration (a
    row skipped) when it appears and, all together, when they are gone, not at every tick.
    A database that refuses us or has no schema raises Misconfigured: waiting will not mend it.
    """

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: Connection | None = None  # kept from tick to tick
        self.last: LoadedConfig | None = None
        self.last_loaded_at: float | None = None
        self.outage = retry.Outage(
            f"PostgreSQL {describe(dsn)}", log, ended="PostgreSQL is back after {after_s:.0f} s"
        )
        self.problems: set[str] = set()  # as last logged

    def load(self) -> LoadedConfig | None:
        """The current configuration, or the last one loaded if the database cannot be read."""
        try:
            if self._conn is None or self._conn.closed:
                self._conn = open_connection(self.dsn)
            config = load_config(self._conn)
        except DatabaseError as exc:
            self.close()  # reconnect on the next tick
            if self.last is None:
                self.outage.failed(f"{exc}; no configuration loaded yet, no jobs")
                return None
            age = time.time() - (self.last_loaded_at or 0)
            self.outage.failed(
                f"{exc}; using the last configuration, loaded {age:.0f} s ago "
                f"({len(self.last.meters)} meters)"
            )
            return self.last
        self.outage.over(f"; configuration reloaded ({len(config.meters)} meters)")
        self._report(config.errors)
        self.last = config
        self.last_loaded_at = time.time()
        return config

    def _report(self, errors: list[str]) -> None:
        """Log the problems that are new since the last load, and say when all are gone."""
        for error in errors:
            if error not in self.problems:
                log.warning("configuration: %s", error)
        current = set(errors)
        gone = len(self.problems - current)
        if gone:
            left = f"; {len(current)} left" if current else ""
            log.info("configuration: %d problem(s) no longer found%s", gone, left)
        self.problems = current

    def close(self) -> None:
        """Drop the kept connection (a new one is opened by the next load)."""
        if self._conn is not None:
            close_quietly(self._conn)
            self._conn = None
