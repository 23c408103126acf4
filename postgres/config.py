"""The queries that load the configuration: every enabled meter with its type's registers and
limits and its gateway's settings for the scheduler's tick, one type's registers for
`emm read`, and every row for `emm check`. The rows are validated by `emm.config`.
"""

from __future__ import annotations

from emm.config import LoadedConfig, Row, build_config, build_type
from emm.planner import ReadLimits
from emm.plausibility import PLAUSIBILITY_KEYS
from emm.registers import Register
from postgres.connection import Connection, map_errors

# A `registers` row as the loaders read it (shared by the tick query and `load_type`).
_REGISTER_JSON = """json_build_object(
    'id', r.id, 'type', r.type, 'address', r.register_address, 'name', r.measurement_name,
    'unit', r.data_unit, 'data_type', r.data_type, 'function_code', r.function_code,
    'byte_order', r.byte_order, 'word_order', r.word_order, 'scale', r.scale,
    'offset', r.value_offset, 'missing', r.missing_values, 'poll_every', r.poll_every,
    'length', r.string_length, 'enum', r.value_names, 'bits', r.bit_names,
    'scale_register', r.scale_register, 'counter', r.counter)"""


# the plausibility limits of a `meter_types` (t) or `energy_meters` (m) row, NULL: not given
def _plausibility_json(alias: str) -> str:
    return ", ".join(f"'{key}', {alias}.{key}" for key in PLAUSIBILITY_KEYS)


_TYPE_JSON = f"""json_build_object(
    'type', t.type, 'max_registers', t.max_read_registers, 'max_bits', t.max_read_bits,
    'max_gap', t.max_gap_registers, {_plausibility_json("t")})"""
# A `gateways` row as the loaders read it (the tick query and `emm check`'s).
_GATEWAY_JSON = """json_build_object(
    'host', g.host, 'port', g.port, 'max_connections', g.max_connections,
    'pause_between_requests_ms', g.pause_between_requests_ms,
    'pause_after_connect_ms', g.pause_after_connect_ms,
    'request_timeout_ms', g.request_timeout_ms, 'max_read_registers', g.max_read_registers,
    'framing', g.framing)"""


_LOAD_SQL = f"""
SELECT 'meter', json_build_object(
    'id', m.id, 'host', m.host, 'port', m.port, 'unit_id', m.slave_address,
    'type', m.type, 'description', m.description, 'read_cron', m.read_cron,
    {_plausibility_json("m")})
FROM energy_meters m
WHERE m.enabled
UNION ALL
SELECT 'register', {_REGISTER_JSON}
FROM registers r
WHERE r.type IN (SELECT type FROM energy_meters WHERE enabled)
UNION ALL
SELECT 'type', {_TYPE_JSON}
FROM meter_types t
UNION ALL
SELECT 'gateway', {_GATEWAY_JSON}
FROM gateways g
WHERE (g.host, g.port) IN (SELECT host, port FROM energy_meters WHERE enabled)
"""

# Every row `emm check` judges: the enabled meters, and every type, register and gateway,
# used or not.
_ALL_SQL = f"""
SELECT 'meter', json_build_object(
    'id', m.id, 'host', m.host, 'port', m.port, 'unit_id', m.slave_address,
    'type', m.type, 'description', m.description, 'read_cron', m.read_cron)
FROM energy_meters m
WHERE m.enabled
UNION ALL
SELECT 'register', {_REGISTER_JSON} FROM registers r
UNION ALL
SELECT 'type', {_TYPE_JSON} FROM meter_types t
UNION ALL
SELECT 'gateway', {_GATEWAY_JSON}
FROM gateways g
"""

_TYPE_SQL = f"""
SELECT 'register', {_REGISTER_JSON} FROM registers r WHERE r.type = %(type)s
UNION ALL
SELECT 'type', {_TYPE_JSON} FROM meter_types t WHERE t.type = %(type)s
"""


def load_config(conn: Connection) -> LoadedConfig:
    """Load every enabled meter with its type's registers and its gateway in one round trip.

    A bad register row or meter is reported in `errors` (naming its table and id) and skipped;
    the rest is returned.
    """
    with map_errors(conn=conn), conn, conn.cursor() as cur:
        cur.execute(_LOAD_SQL)
        rows = cur.fetchall()
    return build_config(rows)


def load_rows(conn: Connection) -> list[Row]:
    """Every row of the configuration, unvalidated: the enabled meters and every type,
    register and gateway (`emm check` judges them with `emm.config`)."""
    with map_errors(conn=conn), conn, conn.cursor() as cur:
        cur.execute(_ALL_SQL)
        return list(cur.fetchall())


def load_type(conn: Connection, type_: str) -> tuple[tuple[Register, ...], ReadLimits, list[str]]:
    """One type's registers and read limits, validated as the scheduler validates them, with
    the messages of the rows that had to be skipped. No registers: an empty tuple."""
    with conn, conn.cursor() as cur:
        cur.execute(_TYPE_SQL, {"type": type_})
        rows = cur.fetchall()
    return build_type(rows, type_)
