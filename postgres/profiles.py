"""A device profile's registers and read limits as rows: storing them (`emm migrate` loads the
shipped ones, `emm profiles import` a file or a shipped one, the simulator's `--write-config` its
own), and reading a type back as `emm profiles` and `emm read` show it."""

from __future__ import annotations

import json
from dataclasses import dataclass

import msgspec

from emm.config import register_from_row
from emm.errors import ConfigError
from emm.planner import ReadLimits
from emm.plausibility import DEFAULT_PLAUSIBILITY, PLAUSIBILITY_KEYS
from emm.profiles import Profile, ProfileRegister
from postgres.connection import Connection, map_errors
from postgres.schema import LOCK_ID

# a type's plausibility limits: the profile's, NULL where it keeps the default
_LIMIT_COLUMNS = ", ".join(PLAUSIBILITY_KEYS)
_LIMIT_VALUES = ", ".join("%s" for _ in PLAUSIBILITY_KEYS)
_LIMIT_UPDATES = ", ".join(f"{key} = EXCLUDED.{key}" for key in PLAUSIBILITY_KEYS)


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
                       missing_values, poll_every, string_length, value_names, bit_names,
                       scale_register, source)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
                           %s)""",
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
                    reg.length or None,
                    _names(reg.enum),
                    _names(reg.bits),
                    reg.scale_register or None,
                    row.source or None,
                ),
            )
        given = {
            key: value
            for key, value in msgspec.structs.asdict(profile.plausibility).items()
            if value != getattr(DEFAULT_PLAUSIBILITY, key)
        }
        limits = [given.get(key) for key in PLAUSIBILITY_KEYS]
        cur.execute(
            f"""INSERT INTO meter_types (type, name, max_read_registers, max_read_bits,
                   max_gap_registers, source, {_LIMIT_COLUMNS})
               VALUES (%s, %s, %s, %s, %s, %s, {_LIMIT_VALUES})
               ON CONFLICT (type) DO UPDATE SET name = EXCLUDED.name,
                   max_read_registers = EXCLUDED.max_read_registers,
                   max_read_bits = EXCLUDED.max_read_bits,
                   max_gap_registers = EXCLUDED.max_gap_registers,
                   source = EXCLUDED.source, {_LIMIT_UPDATES}""",
            (
                profile.type,
                profile.name,
                profile.limits.max_registers,
                profile.limits.max_bits,
                profile.limits.max_gap,
                profile.source or None,
                *limits,
            ),
        )
    return True


def _names(pairs: tuple[tuple[int, str], ...]) -> str | None:
    """An enum's or a bitfield's names as the JSON object its jsonb column holds."""
    return json.dumps({str(k): v for k, v in pairs}) if pairs else None


@dataclass(frozen=True)
class StoredType:
    """A type as PostgreSQL holds it: its register rows (with their datasheet references),
    its read limits and name, and the messages of the rows that could not be used."""

    type: str
    name: str
    limits: ReadLimits
    rows: tuple[ProfileRegister, ...]
    skipped: tuple[str, ...]


_ROWS_SQL = """
SELECT id, type, register_address, measurement_name, data_unit, data_type, function_code,
       byte_order, word_order, scale, value_offset, missing_values, string_length,
       value_names, bit_names, scale_register, source
FROM registers WHERE type = %s ORDER BY function_code, register_address, id
"""
_LIMITS_SQL = """
SELECT name, max_read_registers, max_read_bits, max_gap_registers FROM meter_types WHERE type = %s
"""


def stored_type(conn: Connection, type_: str) -> StoredType | None:
    """The rows and limits of `type_` in the database; None when it has no register rows."""
    with map_errors(conn=conn), conn, conn.cursor() as cur:
        cur.execute(_ROWS_SQL, (type_,))
        rows = cur.fetchall()
        cur.execute(_LIMITS_SQL, (type_,))
        limits_row = cur.fetchone()
    if not rows:
        return None
    registers: list[ProfileRegister] = []
    skipped: list[str] = []
    for row in rows:
        data = dict(zip(_ROW_KEYS, row, strict=True))
        try:
            registers.append(ProfileRegister(register_from_row(data), data["source"] or ""))
        except ConfigError as exc:
            skipped.append(f"registers row id={data['id']} ({data['name']!r}) skipped: {exc}")
    name, limits = type_, ReadLimits()
    if limits_row is not None:
        name = limits_row[0] or type_
        try:
            limits = ReadLimits(
                max_registers=limits_row[1], max_bits=limits_row[2], max_gap=limits_row[3]
            )
        except ConfigError as exc:
            skipped.append(f"meter_types row {type_!r} ignored: {exc}")
    return StoredType(type_, name, limits, tuple(registers), tuple(skipped))


# The columns of `_ROWS_SQL` under the names `emm.config.register_from_row` reads.
_ROW_KEYS = (
    "id",
    "type",
    "address",
    "name",
    "unit",
    "data_type",
    "function_code",
    "byte_order",
    "word_order",
    "scale",
    "offset",
    "missing",
    "length",
    "enum",
    "bits",
    "scale_register",
    "source",
)


def stored_types(conn: Connection) -> dict[str, tuple[int, str]]:
    """Every type with register rows in the database: its row count and its name."""
    with map_errors(conn=conn), conn, conn.cursor() as cur:
        cur.execute(
            """SELECT r.type, count(*), max(t.name) FROM registers r
               LEFT JOIN meter_types t ON t.type = r.type GROUP BY r.type ORDER BY r.type"""
        )
        return {type_: (count, name or type_) for type_, count, name in cur.fetchall()}


def meters_using(conn: Connection, type_: str) -> int:
    """How many `energy_meters` rows (enabled or not) are of type `type_`."""
    with map_errors(conn=conn), conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM energy_meters WHERE type = %s", (type_,))
        (count,) = cur.fetchone()
    return int(count)
