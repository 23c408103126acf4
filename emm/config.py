"""The configuration as loaded from PostgreSQL: meters ready to be read, each with its type's
registers, its read limits and its gateway's settings, validated from the rows the load queries
return (pure: no database access; `postgres.config` runs the queries).

A bad register row, meter or type row is reported by an error naming its table and id, and
skipped; the rest is kept. A meter whose host:port has no `gateways` row (or a bad one) gets the
default gateway settings; a gateway's `max_read_registers` lowers its meters' read limit. A
meter's own `read_cron` is checked here too. A meter's plausibility limits are its type's
(`meter_types`, the defaults where NULL), each overridden by its own non-NULL column; a bad
override is reported and the type's limits are used.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from emm.errors import ConfigError
from emm.limits import MAX_REGISTERS_PER_TYPE
from emm.messages import DEFAULT_GATEWAY, Gateway, Meter
from emm.modbus import MAX_BITS_PER_READ, MAX_REGISTERS_PER_READ
from emm.planner import DEFAULT_MAX_GAP, ReadLimits
from emm.plausibility import DEFAULT_PLAUSIBILITY, PLAUSIBILITY_KEYS, Plausibility
from emm.registers import Order, Register, scale_problems
from emm.schedule import CronSchedule
from emm.text import DESCRIPTION_MAX_CHARS, TYPE_MAX_CHARS, host_problem, tag_problem

# One loaded row: its kind ('meter', 'register', 'type' or 'gateway') and its columns by name.
Row = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class MeterConfig:
    """A meter ready to be read: the device, its registers, the limits it is read within (its
    type's, lowered by its gateway's `max_read_registers`), its gateway's settings and its own
    schedule (None: `EMM_READ_CRON`'s)."""

    meter: Meter
    registers: tuple[Register, ...]
    limits: ReadLimits
    gateway: Gateway = DEFAULT_GATEWAY
    read_cron: CronSchedule | None = None
    plausibility: Plausibility = DEFAULT_PLAUSIBILITY


@dataclass
class LoadedConfig:
    """The result of one load: usable meters, and one message per row that had to be skipped."""

    meters: list[MeterConfig] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def build_config(rows: list[Row]) -> LoadedConfig:
    """Validate the loaded rows into meters (pure: no database access)."""
    out = LoadedConfig()
    registers_by_type, limits_by_type = _types(rows, out.errors)
    gateways = _gateways(rows, out.errors)
    plausibility = _type_plausibility(rows, out.errors)
    meters = [data for kind, data in rows if kind == "meter"]
    # one tuple per type, shared by its meters: jobs serialise a type's registers once
    shared = {type_: tuple(regs) for type_, regs in registers_by_type.items()}
    crons = _Crons()
    for data in sorted(meters, key=lambda d: d["id"]):
        try:
            meter = Meter.from_dict(data)
            _check_text(meter)
            read_cron = crons.get(data.get("read_cron"))
        except (ConfigError, TypeError, ValueError) as exc:
            out.errors.append(f"energy_meters row id={data.get('id')} skipped: {exc}")
            continue
        type_regs = registers_by_type.get(meter.type)
        if not type_regs:
            out.errors.append(
                f"energy_meters row id={meter.id} skipped: type {meter.type!r} has no usable "
                "registers"
            )
            continue
        limits = limits_by_type.get(meter.type, ReadLimits())
        gateway = gateways.get((meter.host, meter.port), DEFAULT_GATEWAY)
        if gateway.max_read_registers is not None:
            limits = replace(
                limits, max_registers=min(limits.max_registers, gateway.max_read_registers)
            )
        out.meters.append(
            MeterConfig(
                meter,
                shared[meter.type],
                limits,
                gateway=gateway,
                read_cron=read_cron,
                plausibility=_meter_plausibility(
                    data, plausibility.get(meter.type, DEFAULT_PLAUSIBILITY), out.errors
                ),
            )
        )
    return out


def _type_plausibility(rows: list[Row], errors: list[str]) -> dict[str, Plausibility]:
    """The plausibility limits by type from its `meter_types` row; a bad row goes to `errors`
    and its meters get the defaults."""
    by_type: dict[str, Plausibility] = {}
    for kind, data in rows:
        if kind != "type":
            continue
        try:
            by_type[data["type"]] = Plausibility.from_mapping(_limits_of(data))
        except ConfigError as exc:
            errors.append(
                f"meter_types row {data.get('type')!r}: plausibility limits ignored (the "
                f"defaults apply): {exc}"
            )
    return by_type


def _meter_plausibility(
    data: dict[str, Any], base: Plausibility, errors: list[str]
) -> Plausibility:
    """A meter's limits: its type's `base`, overridden by its own non-NULL columns."""
    try:
        return Plausibility.from_mapping(_limits_of(data), base)
    except ConfigError as exc:
        errors.append(
            f"energy_meters row id={data.get('id')}: plausibility limits ignored (its type's "
            f"apply): {exc}"
        )
        return base


def _limits_of(data: dict[str, Any]) -> dict[str, Any]:
    return {key: data.get(key) for key in PLAUSIBILITY_KEYS}


def _check_text(meter: Meter) -> None:
    """Refuse a meter whose host, type or description cannot be used as given (`emm.text`)."""
    checks = (
        ("host", host_problem(meter.host)),
        ("type", tag_problem(meter.type, TYPE_MAX_CHARS)),
        ("description", tag_problem(meter.description or "", DESCRIPTION_MAX_CHARS)),
    )
    for column, problem in checks:
        if problem is not None:
            raise ConfigError(f"{column} {problem}")


def _gateways(rows: list[Row], errors: list[str]) -> dict[tuple[str, int], Gateway]:
    """The gateways' settings by (host, port) from loaded rows; a bad row goes to `errors` and
    its meters get the defaults."""
    gateways: dict[tuple[str, int], Gateway] = {}
    for kind, data in rows:
        if kind != "gateway":
            continue
        try:
            gateways[(data["host"], data["port"])] = Gateway.from_dict(data)
        except (ConfigError, TypeError, ValueError) as exc:
            errors.append(
                f"gateways row {data.get('host')}:{data.get('port')} ignored (its meters get "
                f"the defaults): {exc}"
            )
    return gateways


class _Crons:
    """The meters' own crons of one load, each expression parsed once (most meters share a few)."""

    def __init__(self) -> None:
        self._parsed: dict[str, CronSchedule | str] = {}  # a schedule, or why there is none

    def get(self, expression: str | None) -> CronSchedule | None:
        """The schedule of `expression` (None: none of its own); ConfigError for a bad one."""
        if expression is None:
            return None
        parsed = self._parsed.get(expression)
        if parsed is None:
            try:
                parsed = CronSchedule(expression, setting="read_cron")
            except ConfigError as exc:
                parsed = str(exc)
            self._parsed[expression] = parsed
        if isinstance(parsed, str):
            raise ConfigError(parsed)
        return parsed


def build_type(rows: list[Row], type_: str) -> tuple[tuple[Register, ...], ReadLimits, list[str]]:
    """One type's registers and read limits from its loaded rows, validated as `build_config`
    validates them, with the messages of the rows that had to be skipped. No registers: an
    empty tuple."""
    errors: list[str] = []
    registers, limits = _types(rows, errors)
    return tuple(registers.get(type_, ())), limits.get(type_, ReadLimits()), errors


def _types(
    rows: list[Row], errors: list[str]
) -> tuple[dict[str, list[Register]], dict[str, ReadLimits]]:
    """Registers and read limits by type from loaded rows; bad rows go to `errors`."""
    registers_by_type: dict[str, list[Register]] = {}
    names_by_type: dict[str, set[str]] = {}  # the duplicate check, linear in the rows
    too_many: dict[str, list[Any]] = {}  # type -> ids of its rows beyond the limit
    limits_by_type: dict[str, ReadLimits] = {}
    for kind, data in sorted(rows, key=lambda r: (r[0], r[1].get("address", 0), r[1].get("id", 0))):
        if kind == "register":
            try:
                reg = register_from_row(data)
            except ConfigError as exc:
                errors.append(
                    f"registers row id={data.get('id')} (type {data.get('type')!r}, "
                    f"{data.get('name')!r}) skipped: {exc}"
                )
                continue
            regs = registers_by_type.setdefault(data["type"], [])
            names = names_by_type.setdefault(data["type"], set())
            if reg.name in names:
                errors.append(
                    f"registers row id={data.get('id')} (type {data.get('type')!r}) skipped: "
                    f"measurement_name {reg.name!r} appears twice for this type"
                )
                continue
            if len(regs) >= MAX_REGISTERS_PER_TYPE:
                # one line per type, not one per row (a type of 10,000 rows would log 8,000)
                over = too_many.setdefault(data["type"], [])
                over.append(data.get("id"))
                continue
            names.add(reg.name)
            regs.append(reg)
        elif kind == "type":
            try:
                limits_by_type[data["type"]] = ReadLimits(
                    max_registers=data["max_registers"] or MAX_REGISTERS_PER_READ,
                    max_bits=data["max_bits"] or MAX_BITS_PER_READ,
                    max_gap=DEFAULT_MAX_GAP if data["max_gap"] is None else data["max_gap"],
                )
            except ConfigError as exc:
                errors.append(f"meter_types row {data.get('type')!r} ignored: {exc}")
    for type_, regs in registers_by_type.items():
        problems = scale_problems(regs)
        if problems:
            # a value whose scale factor cannot be read with it would be stored unscaled
            for name, problem in problems.items():
                errors.append(f"registers row (type {type_!r}, {name!r}) skipped: {problem}")
            regs[:] = [r for r in regs if r.name not in problems]
    for type_, ids in too_many.items():
        which = f"row id={ids[0]}" if len(ids) == 1 else f"rows id={ids[0]} and {len(ids) - 1} more"
        errors.append(
            f"registers {which} (type {type_!r}) skipped: a "
            f"type may have at most {MAX_REGISTERS_PER_TYPE} registers (the first by address "
            "are kept)"
        )
    return registers_by_type, limits_by_type


def register_from_row(data: dict[str, Any]) -> Register:
    """Build a Register from a `registers` row (as the load queries shape it)."""
    # the row's keys are the builder's, but for the order, which it stores as two codes
    order = Order.from_codes(data.get("byte_order") or 2, data.get("word_order") or 2)
    return Register.from_mapping({**data, "order": order})
