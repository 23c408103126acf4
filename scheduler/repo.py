"""The scheduler's view of PostgreSQL: the configuration, and the last good one for outages."""

from __future__ import annotations

import logging
import time

from emm.config import LoadedConfig
from emm.errors import DatabaseError
from postgres.config import load_config
from postgres.connection import Connection, close_quietly, open_connection

log = logging.getLogger(__name__)


class ConfigRepo:
    """Loads meters and registers each tick; falls back to the last load when PostgreSQL is down."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: Connection | None = None  # kept from tick to tick
        self.last: LoadedConfig | None = None
        self.last_loaded_at: float | None = None
        self._outage = False

    def load(self) -> LoadedConfig | None:
        """The current configuration, or the last one loaded if the database cannot be read."""
        try:
            if self._conn is None or self._conn.closed:
                self._conn = open_connection(self.dsn)
            config = load_config(self._conn)
        except DatabaseError as exc:
            self.close()  # reconnect on the next tick
            if self.last is None:
                log.error("cannot load the configuration and none was loaded before: %s", exc)
                return None
            if not self._outage:
                age = time.time() - (self.last_loaded_at or 0)
                log.error(
                    "cannot load the configuration (%s); using the last one, loaded %.0f s ago "
                    "(%d meters)",
                    exc,
                    age,
                    len(self.last.meters),
                )
            self._outage = True
            return self.last
        if self._outage:
            log.info("PostgreSQL is back; configuration reloaded (%d meters)", len(config.meters))
            self._outage = False
        for error in config.errors:
            log.warning("configuration: %s", error)
        self.last = config
        self.last_loaded_at = time.time()
        return config

    def close(self) -> None:
        """Drop the kept connection (a new one is opened by the next load)."""
        if self._conn is not None:
            close_quietly(self._conn)
            self._conn = None
