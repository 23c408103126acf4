"""InfluxDB line protocol for readings (pure).

Every reading gives one `energy` point (one float field per register, when any value was read)
and one `meter_status` point, both stamped with the tick time in milliseconds; a reading with
energy counters also gives `energy_delta` points (`delta_lines`). Tags are sorted,
so the same reading always gives the same bytes and a second write of it replaces the first.
"""

from __future__ import annotations

from functools import lru_cache

from emm.messages import Meter, Reading
from writer.counters import Delta

ENERGY = "energy"
STATUS = "meter_status"
DELTA = "energy_delta"

_TAG_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\ ", "\\": "\\\\"})


def _tag(text: str) -> str:
    return text.translate(_TAG_ESCAPES)


# Field names and tag sets repeat on every tick: escape each once.
@lru_cache(maxsize=100_000)
def _field_key(name: str) -> str:
    return _tag(name) + "="


@lru_cache(maxsize=100_000)
def _tags(meter: Meter) -> str:
    return ",".join(f"{_tag(k)}={_tag(v)}" for k, v in sorted(meter.tags().items()) if v)


def _string_field(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


def reading_lines(reading: Reading, counter_resets: list[str] | None = None) -> list[str]:
    """The line-protocol lines (ms precision) of one reading.

    `counter_resets` names counters that went down since the meter's previous tick; they are
    flagged in the `meter_status` point.
    """
    tags = _tags(reading.meter)
    ts = reading.tick_ms
    lines = []
    if reading.fields:
        fields = ",".join(
            [_field_key(name) + repr(value) for name, value in reading.fields.items()]
        )
        lines.append(f"{ENERGY},{tags} {fields} {ts}")
    s = reading.status
    status_fields = (
        f"up={'true' if s.up else 'false'},"
        f"error_code={_string_field(s.error_code)},"
        f"latency_ms={float(s.latency_ms)!r},"
        f"requests={s.requests}i,"
        f"values={len(reading.fields)}i,"
        f"missing={len(reading.missing)}i,"
        f"errors={len(reading.errors)}i"
    )
    if counter_resets:
        names = _string_field(",".join(counter_resets))
        status_fields += f",counter_resets={len(counter_resets)}i,counter_reset_fields={names}"
    lines.append(f"{STATUS},{tags} {status_fields} {ts}")
    return lines


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
