"""PostgreSQL: registering the virtual meters as `energy_meters` rows (`--write-config`).

Each simulated meter is one row known by its address (host:port and unit id), described
`sim-<index>`; a later run at the same address updates that row's type instead of adding
another, so writing twice never duplicates, and a second simulator on another port adds its own.
"""

from __future__ import annotations

from collections.abc import Sequence

from emm.profiles import Profile
from postgres.connection import connect
from postgres.meters import MeterRow, WriteResult, upsert_meters
from postgres.profiles import import_profile
from postgres.schema import migrate

__all__ = ["MeterRow", "WriteResult", "write_config"]


def write_config(dsn: str, profile: Profile, rows: Sequence[MeterRow]) -> WriteResult:
    """Create the schema if needed, load `profile` unless its type has registers, and add or
    update one meter row per entry of `rows`."""
    with connect(dsn) as conn:
        migrate(conn)
        import_profile(conn, profile, replace=False)
        return upsert_meters(conn, profile.type, rows)
