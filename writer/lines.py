"""InfluxDB line protocol for readings and gateway statuses (pure).

Every reading gives one `energy` point (one float field per register, when any value was read)
and one `meter_status` point, both stamped with the tick time in milliseconds; a reading with
energy counters also gives `energy_delta` points (`delta_lines`), and one whose values the
plausibility guard refused an `energy_suspect` point (`suspect_lines`). Tags are sorted,
so the same reading always gives the same bytes and a second write of it replaces the first.

Escaping follows InfluxDB's parser: in tag values and field keys a comma, equals sign or space
is escaped with a backslash, and nothing else is unescaped, so a backslash is written as it is
(escaping it would store it doubled). What line protocol cannot carry exactly is refused with
`Unwritable` instead: a tag with a control character or a backslash InfluxDB would read as
an escape (at the end, or before a backslash, comma, equals sign or space), an over-long tag
(`emm.text`), a field name a register may not have (`emm.registers.name_problem`), more fields
than a type may have registers, text that is not valid Unicode.

A reading with text values (strings, enums, bitfields: identity and state) also gives one
`meter_info` point of string fields, never tags: a serial number or a firmware version that
changes must not start a new series.

A gateway's status gives one `gateway_status` point, tagged `gateway` (host:port), at its tick.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from emm.limits import MAX_REGISTERS_PER_TYPE
from emm.messages import GatewayStatus, Meter, Reading
from emm.registers import name_problem
from emm.text import DESCRIPTION_MAX_CHARS, TYPE_MAX_CHARS, tag_problem
from writer.counters import Delta

ENERGY = "energy"
STATUS = "meter_status"
INFO = "meter_info"
GATEWAY_STATUS = "gateway_status"
DELTA = "energy_delta"
SUSPECT = "energy_suspect"

_TAG_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
_TAG_MAX_CHARS = {"type": TYPE_MAX_CHARS, "description": DESCRIPTION_MAX_CHARS}


class Unwritable(ValueError):
    """A reading that line protocol cannot carry as it is: no retry will ever store it."""


def _tag(text: str) -> str:
    return text.translate(_TAG_ESCAPES)


# Field names and tag sets repeat on every tick: check and escape each once (a refused one
# raises, and lru_cache keeps no result for it).
@lru_cache(maxsize=100_000)
def _field_key(name: str) -> str:
    problem = name_problem(name)
    if problem is not None:
        raise Unwritable(problem)
    return _tag(name) + "="


@lru_cache(maxsize=100_000)
def _tags(meter: Meter) -> str:
    tags = sorted(meter.tags().items())
    for key, value in tags:
        problem = tag_problem(value, _TAG_MAX_CHARS.get(key, TYPE_MAX_CHARS))
        if problem is not None:
            raise Unwritable(f"meter {meter.id}: tag {key} {problem}")
    return ",".join(f"{_tag(k)}={_tag(v)}" for k, v in tags if v)


def _string_field(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


def reading_lines(
    reading: Reading, counter_resets: list[str] | None = None, suspect: Sequence[str] = ()
) -> list[str]:
    """The line-protocol lines (ms precision) of one reading; Unwritable if line protocol
    cannot carry it.

    `counter_resets` names counters that went down since the meter's previous tick, `suspect`
    the fields the plausibility guard kept out (`writer.plausibility`); both are flagged in the
    `meter_status` point (`suspect` on every reading that carries a guard).
    """
    values = len(reading.fields) + len(reading.text)
    if values > MAX_REGISTERS_PER_TYPE:
        raise Unwritable(
            f"reading has {values} fields, at most {MAX_REGISTERS_PER_TYPE} are allowed"
        )
    tags = _tags(reading.meter)
    ts = reading.tick_ms
    lines = []
    if reading.fields:
        fields = ",".join(
            [_field_key(name) + repr(value) for name, value in reading.fields.items()]
        )
        lines.append(f"{ENERGY},{tags} {fields} {ts}")
    if reading.text:
        text = ",".join(
            [_field_key(name) + _string_field(value) for name, value in reading.text.items()]
        )
        lines.append(f"{INFO},{tags} {text} {ts}")
    s = reading.status
    status_fields = (
        f"up={'true' if s.up else 'false'},"
        f"error_code={_string_field(s.error_code)},"
        f"latency_ms={float(s.latency_ms)!r},"
        f"requests={s.requests}i,"
        f"values={values}i,"
        f"missing={len(reading.missing)}i,"
        f"errors={len(reading.errors)}i"
    )
    if counter_resets:
        names = _string_field(",".join(counter_resets))
        status_fields += f",counter_resets={len(counter_resets)}i,counter_reset_fields={names}"
    if reading.guard is not None:
        status_fields += f",suspect={len(suspect)}i"
        if suspect:
            status_fields += f",suspect_fields={_string_field(','.join(sorted(suspect)))}"
    lines.append(f"{STATUS},{tags} {status_fields} {ts}")
    return lines


def reading_bytes(
    reading: Reading,
    counter_resets: list[str] | None = None,
    more: Sequence[str] = (),
    suspect: Sequence[str] = (),
) -> bytes:
    """`reading_lines`, then the lines `more` that go with them (its energy deltas, its
    suspect values), as the UTF-8 bytes sent to InfluxDB (lines joined by newlines)."""
    text = "\n".join([*reading_lines(reading, counter_resets, suspect), *more])
    try:
        return text.encode()
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end]
        raise Unwritable(f"reading holds text that is not valid Unicode ({bad!r})") from None


def gateway_status_lines(status: GatewayStatus) -> list[str]:
    """The line-protocol line (ms precision) of one gateway's status at one tick."""
    fields = (
        f"meters={status.meters}i,"
        f"requests={status.requests}i,"
        f"busy_ms={float(status.busy_ms)!r},"
        f"utilisation={round(status.utilisation, 4)!r},"
        f"late={status.late}i,"
        f"connections={status.connections}i,"
        f"period_ms={status.period_ms}i"
    )
    return [f"{GATEWAY_STATUS},gateway={_tag(status.name)} {fields} {status.tick_ms}"]


def delta_lines(meter: Meter, deltas: list[Delta]) -> list[str]:
    """The `energy_delta` lines of a meter: per counter its increment since the previous
    reading (same field name as in `energy`), and `gap_ticks`, the ticks missed before it."""
    tags = _tags(meter)
    return [
        f"{DELTA},{tags} "
        + ",".join([_field_key(name) + repr(value) for name, value in d.values.items()])
        + f",gap_ticks={d.gap_ticks}i {d.tick_ms}"
        for d in deltas
    ]


def suspect_lines(reading: Reading, suspect: Sequence[str]) -> list[str]:
    """The `energy_suspect` line of a reading: the values the plausibility guard kept out of
    its `energy` point, as they were read."""
    if not suspect:
        return []
    fields = ",".join([_field_key(name) + repr(reading.fields[name]) for name in sorted(suspect)])
    return [f"{SUSPECT},{_tags(reading.meter)} {fields} {reading.tick_ms}"]
