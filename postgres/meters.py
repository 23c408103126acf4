"""`energy_meters` rows written by a program rather than by hand (the simulator's
`--write-config`).

Each row is known by its description; a later write updates that row's host, port, unit id and
type instead of adding another, so writing twice never duplicates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from psycopg2.extras import execute_values

from postgres.connection import Connection

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


def upsert_meters(conn: Connection, type_: str, rows: Sequence[MeterRow]) -> WriteResult:
    """Add or update one meter row of type `type_` per entry of `rows`, by description."""
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
            wanted = (r.host, r.port, r.slave_address, type_)
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
