"""PostgreSQL: registering the virtual meters as `energy_meters` rows (`--write-config`).

Each simulated meter is one row with description `sim-<index>`; a later run updates that row's
host, port, unit id and type instead of adding another, so writing twice never duplicates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from psycopg2.extras import execute_values

from emm import db
from emm.profiles import Profile

_LOCK_ID = 0x454D4D53  # advisory lock: two simulators registering at once do not race


@dataclass(frozen=True, slots=True)
class MeterRow:
    """An `energy_meters` row for one virtual meter."""

    description: str
    host: str
    port: int
    slave_address: int


@dataclass(frozen=True, slots=True)
class WriteResult:
    added: int
    updated: int
    unchanged: int


def write_config(dsn: str, profile: Profile, rows: Sequence[MeterRow]) -> WriteResult:
    """Create the schema if needed, load `profile` unless its type has registers, and add or
    update one meter row per entry of `rows`."""
    with db.connect(dsn) as conn:
        db.migrate(conn)
        db.import_profile(conn, profile, replace=False)
        with conn, conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
            cur.execute(
                """SELECT description, host, port, slave_address, type FROM energy_meters
                   WHERE description = ANY(%s)""",
                ([r.description for r in rows],),
            )
            existing = {row[0]: tuple(row[1:]) for row in cur.fetchall()}
            inserts, updates = [], []
            unchanged = 0
            for r in rows:
                wanted = (r.host, r.port, r.slave_address, profile.type)
                current = existing.get(r.description)
                if current is None:
                    inserts.append((*wanted, r.description))
                elif current != wanted:
                    updates.append((*wanted, r.description))
                else:
                    unchanged += 1
            if inserts:
                execute_values(
                    cur,
                    """INSERT INTO energy_meters (host, port, slave_address, type, description)
                       VALUES %s""",
                    inserts,
                )
            if updates:
                execute_values(
                    cur,
                    """UPDATE energy_meters AS m SET host = v.host, port = v.port,
                           slave_address = v.slave_address, type = v.type
                       FROM (VALUES %s) AS v (host, port, slave_address, type, description)
                       WHERE m.description = v.description""",
                    updates,
                )
    return WriteResult(len(inserts), len(updates), unchanged)
