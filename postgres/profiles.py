"""Storing a device profile's registers and read limits as rows (`emm migrate` loads the
shipped ones, `emm profiles import` a file, the simulator's `--write-config` its own)."""

from __future__ import annotations

from emm.profiles import Profile
from postgres.connection import Connection
from postgres.schema import LOCK_ID


def import_profile(conn: Connection, profile: Profile, *, replace: bool) -> bool:
    """Store a profile's registers and limits under its type.

    With `replace` the type's existing rows are replaced; without it a type that already has
    registers is left alone (so `emm migrate` never overwrites a user's edits). Returns whether
    anything was written.
    """
    with conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_ID,))
        cur.execute("SELECT count(*) FROM registers WHERE type = %s", (profile.type,))
        (existing,) = cur.fetchone()
        if existing and not replace:
            return False
        cur.execute("DELETE FROM registers WHERE type = %s", (profile.type,))
        for row in profile.rows:
            reg = row.register
            missing = (
                None if reg.missing is None else ",".join(f"{m:#x}" for m in sorted(reg.missing))
            )
            cur.execute(
                """INSERT INTO registers (type, register_address, measurement_name, data_unit,
                       data_type, function_code, byte_order, word_order, scale, value_offset,
                       missing_values, poll_every, source)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
                (
                    profile.type,
                    reg.address,
                    reg.name,
                    reg.unit,
                    int(reg.data_type),
                    reg.function_code,
                    reg.order.byte_order,
                    reg.order.word_order,
                    reg.scale,
                    reg.offset,
                    missing,
                    reg.poll_every,
                    row.source or None,
                ),
            )
        cur.execute(
            """INSERT INTO meter_types (type, name, max_read_registers, max_read_bits,
                   max_gap_registers, source)
               VALUES (%s, %s, %s, %s, %s, %s)
               ON CONFLICT (type) DO UPDATE SET name = EXCLUDED.name,
                   max_read_registers = EXCLUDED.max_read_registers,
                   max_read_bits = EXCLUDED.max_read_bits,
                   max_gap_registers = EXCLUDED.max_gap_registers,
                   source = EXCLUDED.source""",
            (
                profile.type,
                profile.name,
                profile.limits.max_registers,
                profile.limits.max_bits,
                profile.limits.max_gap,
                profile.source or None,
            ),
        )
    return True
