"""`energy_meters` rows written by a program rather than by hand (the simulator's
`--write-config`).

Each row is known by its address, host:port and unit id: a later write at the same address
updates that row's type and description instead of adding another, so writing twice never
duplicates, and a second simulator (another port or host) adds its own rows instead of taking
over the first one's.
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
    """Add or update one meter row of type `type_` per entry of `rows`, by address."""
    with conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
        cur.execute(
            """SELECT host, port, slave_address, type, description FROM energy_meters
               WHERE (host, port) IN (SELECT * FROM unnest(%s::text[], %s::int[]))""",
            ([r.host for r in rows], [r.port for r in rows]),
        )
        existing = {tuple(row[:3]): tuple(row[3:]) for row in cur.fetchall()}
        inserts, updates = [], []
        unchanged = 0
        for r in rows:
            address = (r.host, r.port, r.slave_address)
            wanted = (type_, r.description)
            current = existing.get(address)
            if current is None:
                inserts.append((*address, *wanted))
            elif current != wanted:
                updates.append((*address, *wanted))
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
                """UPDATE energy_meters AS m SET type = v.type, description = v.description
                   FROM (VALUES %s) AS v (host, port, slave_address, type, description)
                   WHERE (m.host, m.port, m.slave_address) = (v.host, v.port, v.slave_address)""",
                updates,
            )
    return WriteResult(len(inserts), len(updates), unchanged)
