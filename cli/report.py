"""`emm report`: energy per day or month of one meter, and the meters whose readings are
incomplete, from what InfluxDB stored (the `energy_delta` points the writer makes).

InfluxDB is found with the writer's settings (`EMM_INFLUX_URL`, `EMM_INFLUX_API`,
`EMM_INFLUX_TOKEN`, `EMM_INFLUX_BUCKET`) and queried in InfluxQL: InfluxDB 1.x directly,
2.x through its v1-compatible `/query` endpoint (the bucket mapped by DBRP). Ticks are counted
on `EMM_READ_CRON`, as the scheduler makes them.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from emm.errors import ConfigError
from emm.schedule import CronSchedule
from emm.settings import WriterSettings
from writer.counters import tick_counter
from writer.influxql import InfluxQL, Series

GAP = "gap_ticks"
_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `report` subcommand and its two reports."""
    p = sub.add_parser("report", help="energy per period, and completeness, from InfluxDB")
    reports = p.add_subparsers(dest="report_command", required=True, metavar="REPORT")
    e = reports.add_parser("energy", help="energy per day or month of one meter")
    e.add_argument("--meter", required=True, type=int, help="meter id")
    e.add_argument("--from", dest="start", required=True, help="first day, YYYY-MM-DD")
    e.add_argument("--to", dest="end", required=True, help="day after the last, YYYY-MM-DD")
    e.add_argument("--every", choices=("day", "month"), default="day")
    e.add_argument("--tz", default="UTC", help="time zone of the days (e.g. Europe/Berlin)")
    e.add_argument("--csv", action="store_true", help="comma separated, full precision")
    c = reports.add_parser("completeness", help="meters with fewer readings than ticks")
    c.add_argument("--since", default="24h", help="how far back: 30m, 24h, 7d")


def reader(settings: WriterSettings) -> InfluxQL:
    """InfluxQL on the InfluxDB the writer writes to (its `EMM_INFLUX_*` settings)."""
    return InfluxQL(
        settings.influx_url,
        settings.influx_bucket,
        api=settings.influx_api,
        token=settings.influx_token,
        timeout_s=max(settings.write_timeout_s, 30.0),
    )


def run(args: argparse.Namespace) -> int:
    settings = WriterSettings.from_env()
    db = reader(settings)
    try:
        if args.report_command == "energy":
            return energy(db, args)
        return completeness(db, args, CronSchedule(settings.read_cron, setting="EMM_READ_CRON"))
    finally:
        db.close()


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"--tz {name!r} is not a time zone (e.g. Europe/Berlin, UTC)") from None


def _day(text: str, zone: ZoneInfo, option: str) -> datetime:
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=zone)
    except ValueError:
        raise ConfigError(f"{option} {text!r} is not a date YYYY-MM-DD") from None


def energy(db: InfluxQL, args: argparse.Namespace) -> int:
    """Print the meter's counted energy per day or month: sums of its `energy_delta`."""
    zone = _zone(args.tz)
    start, end = _day(args.start, zone, "--from"), _day(args.end, zone, "--to")
    if end <= start:
        raise ConfigError("--to must be after --from")
    start_ms, end_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    q = (
        f'SELECT sum(*) FROM "energy_delta" WHERE "meter_id"::tag = \'{args.meter}\' '
        f"AND time >= {start_ms}ms AND time < {end_ms}ms GROUP BY time(1d) fill(0) tz('{zone.key}')"
    )
    rows = [row for s in db.query(q) for row in s.rows]
    names = sorted({k[4:] for row in rows for k in row if k.startswith("sum_")} - {GAP})
    periods: dict[str, dict[str, float]] = {}
    for row in rows:
        day = datetime.fromtimestamp(row["time"] / 1000, zone)
        key = day.strftime("%Y-%m" if args.every == "month" else "%Y-%m-%d")
        period = periods.setdefault(key, dict.fromkeys([*names, GAP], 0.0))
        for name in [*names, GAP]:
            period[name] += row.get(f"sum_{name}") or 0.0
    if not periods:
        print(f"no energy_delta points of meter {args.meter} in that time", file=sys.stderr)
        return 1
    header = ["period", *names, "missed_ticks"]
    table = [[key, *(p[n] for n in names), int(p[GAP])] for key, p in periods.items()]
    if args.csv:
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(header)
        out.writerows([[row[0], *(repr(v) for v in row[1:-1]), row[-1]] for row in table])
    else:
        print(f"meter {args.meter}, {args.tz}, counter units as the meter's registers")
        print_table(header, [[row[0], *(f"{v:.3f}" for v in row[1:-1]), row[-1]] for row in table])
    return 0


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        print(
            "  ".join(
                str(x).rjust(w) if i else str(x).ljust(w)
                for i, (x, w) in enumerate(zip(row, widths, strict=True))
            )
        )


def duration_s(text: str) -> int:
    match = _DURATION.match(text.strip())
    if not match:
        raise ConfigError(f"--since {text!r} is not a duration such as 30m, 24h or 7d")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


def completeness(db: InfluxQL, args: argparse.Namespace, cron: CronSchedule) -> int:
    """Print each meter below 100 %: ticks stored / ticks scheduled since `--since`, and its
    gaps (from `energy_delta.gap_ticks`, and the ticks since its last reading)."""
    now_ms = int(time.time() * 1000)
    since_ms = now_ms - duration_s(args.since) * 1000
    between = tick_counter(cron.next_after)
    first = cron.next_after(since_ms - 1)
    expected = 0 if first > now_ms else 1 + between(first, now_ms + 1)
    window = f"time >= {since_ms}ms AND time <= {now_ms}ms"
    counts = by_meter(
        db.query(f'SELECT count("{GAP}") FROM "energy_delta" WHERE {window} GROUP BY "meter_id"')
    )
    gaps = by_meter(
        db.query(
            f'SELECT "{GAP}" FROM "energy_delta" WHERE {window} AND "{GAP}" > 0 GROUP BY "meter_id"'
        )
    )
    lasts = by_meter(
        db.query(
            f'SELECT last("{GAP}") FROM "energy_delta" WHERE time <= {now_ms}ms GROUP BY "meter_id"'
        )
    )
    known = {
        m
        for s in db.query('SHOW TAG VALUES FROM "meter_status" WITH KEY = "meter_id"')
        for m in [r["value"] for r in s.rows]
    }
    below = []
    for meter in sorted(known | set(counts), key=lambda m: (len(m), m)):
        stored = int(counts[meter][0]["count"]) if meter in counts else 0
        if expected and stored >= expected:
            continue
        lines = [
            f"{int(r[GAP])} ticks missed before {_when(r['time'])}" for r in gaps.get(meter, [])
        ]
        last = lasts[meter][0]["time"] if meter in lasts else None
        if last is None:
            lines.append("no reading stored")
        elif (trailing := between(last, now_ms + 1)) > 0:
            lines.append(f"{trailing} ticks missed since {_when(last)}")
        below.append((meter, stored, lines))
    if not below:
        print(f"every meter has all {expected} ticks since {_when(since_ms)}")
        return 0
    print(f"{expected} ticks since {_when(since_ms)} ({cron.expression}); meters below 100 %:")
    for meter, stored, lines in below:
        share = 100.0 * stored / expected if expected else 0.0
        print(f"meter {meter}: {stored}/{expected} ticks stored ({share:.1f} %)")
        for line in lines:
            print(f"  {line}")
    return 0


def by_meter(series: list[Series]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for s in series:
        out.setdefault(s.tags.get("meter_id", ""), []).extend(s.rows)
    return out


def _when(ms: object) -> str:
    assert isinstance(ms, int | float)
    return datetime.fromtimestamp(ms / 1000).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
