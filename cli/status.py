"""`emm status`: the operator's view of the system now, from what InfluxDB stored and what
RabbitMQ holds.

Per meter (every `meter_id` in `meter_status`): its state, the age of its last reading, and over
the window (`--since`, default 1h) its mean read latency, failed reads, suspect readings and
completeness (up readings / ticks of `EMM_READ_CRON`). States:

    up        its last reading was read and clean
    suspect   its last reading was read but the plausibility guard kept values out
    offline   its last reading failed (the device did not answer)
    stale     its last reading is more than one tick old: no reading came for two ticks or
              more (a worker or the writer is stuck, or the meter was removed)

Per gateway (`gateway_status`): utilisation at its last tick and the most in the window, and
jobs dropped as late. Queue depths come from RabbitMQ's management API
(`EMM_RABBITMQ_API_URL`, or derived from `EMM_AMQP_URL`); when it cannot be reached the
status says "not reachable" and goes on.

Exit status: 0 when no meter is offline or stale (suspect values do not count: the meter is up),
1 when one is (usable in cron or as a health probe), 3 when the status cannot be told (InfluxDB
unreachable or refusing: "unknown", as monitoring plugins say), 78 for a bad setting.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import urllib3

from cli.report import by_meter, duration_s, print_table, reader
from emm.errors import SinkError
from emm.schedule import CronSchedule
from emm.settings import StatusSettings, WriterSettings
from writer.counters import tick_counter
from writer.influxql import InfluxQL

DOWN = ("offline", "stale")
MANAGEMENT_PORT = 15672
API_TIMEOUT_S = 5.0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `status` subcommand."""
    p = sub.add_parser("status", help="meters, gateways and queues now; exit 1 when one is down")
    p.add_argument("--since", default="1h", help="window of the counts: 30m, 1h, 24h")
    p.add_argument("--json", action="store_true", help="one JSON object, for scripts")


@dataclass
class MeterState:
    """One meter's line of the status."""

    meter_id: str
    state: str
    last_reading_ms: int | None
    age_s: float | None
    error_code: str
    latency_ms: float | None
    readings: int
    errors: int
    suspect: int
    completeness: float


@dataclass
class Queues:
    """RabbitMQ's queues of the system, or why they could not be read."""

    api_url: str
    reachable: bool
    error: str = ""
    queues: list[dict[str, Any]] = field(default_factory=list)


UNKNOWN = 3  # the exit status when InfluxDB cannot tell how the meters are


def run(args: argparse.Namespace) -> int:
    """Print the status; the exit status (0 all up, 1 one is down, UNKNOWN)."""
    try:
        return _run(args)
    except SinkError as exc:
        print(f"emm status: {exc}", file=sys.stderr)
        return UNKNOWN


def _run(args: argparse.Namespace) -> int:
    writer = WriterSettings.from_env()
    settings = StatusSettings.from_env()
    since_s = duration_s(args.since)
    db = reader(writer)
    try:
        now_ms = int(time.time() * 1000)
        cron = CronSchedule(settings.read_cron, setting="EMM_READ_CRON")
        expected = _expected_ticks(cron, now_ms - since_s * 1000, now_ms)
        meters = meter_states(db, cron, now_ms, since_s, expected)
        gateways = gateway_states(db, now_ms, since_s)
    finally:
        db.close()
    queues = queue_depths(settings)
    down = [m.meter_id for m in meters if m.state in DOWN]
    if args.json:
        print(
            json.dumps(
                {
                    "since_s": since_s,
                    "expected_ticks": expected,
                    "meters": [asdict(m) for m in meters],
                    "gateways": gateways,
                    "queues": asdict(queues),
                    "down": down,
                },
                indent=2,
            )
        )
    else:
        _print(meters, gateways, queues, args.since, expected, cron)
    return 1 if down else 0


def _expected_ticks(cron: CronSchedule, since_ms: int, now_ms: int) -> int:
    first = cron.next_after(since_ms - 1)
    return 0 if first > now_ms else 1 + tick_counter(cron.next_after)(first, now_ms + 1)


def meter_states(
    db: InfluxQL, cron: CronSchedule, now_ms: int, since_s: int, expected: int
) -> list[MeterState]:
    """Every meter's state now and its counts over the window."""
    window = f"time >= {now_ms - since_s * 1000}ms AND time <= {now_ms}ms"
    last = by_meter(
        db.query(
            'SELECT last("up") AS "up", "error_code", "suspect" FROM "meter_status" '
            f'WHERE time <= {now_ms}ms GROUP BY "meter_id"'
        )
    )
    good = by_meter(
        db.query(
            'SELECT count("up") AS "n", mean("latency_ms") AS "latency_ms" FROM "meter_status" '
            f'WHERE {window} AND "up" = true GROUP BY "meter_id"'
        )
    )
    bad = by_meter(
        db.query(
            f'SELECT count("up") AS "n" FROM "meter_status" WHERE {window} AND "up" = false '
            'GROUP BY "meter_id"'
        )
    )
    suspect = by_meter(
        db.query(
            f'SELECT count("suspect_fields") AS "n" FROM "meter_status" WHERE {window} '
            'GROUP BY "meter_id"'
        )
    )
    between = tick_counter(cron.next_after)
    states = []
    for meter in sorted(last, key=lambda m: (len(m), m)):
        row = last[meter][0]
        tick = int(row["time"])
        up = good.get(meter, [{}])[0]
        readings = int(up.get("n") or 0)
        if not row["up"]:
            state = "offline"
        elif between(tick, now_ms + 1) >= 2:
            state = "stale"
        else:
            state = "suspect" if row.get("suspect") else "up"
        states.append(
            MeterState(
                meter_id=meter,
                state=state,
                last_reading_ms=tick,
                age_s=round((now_ms - tick) / 1000, 1),
                error_code=row.get("error_code") or "",
                latency_ms=None if up.get("latency_ms") is None else round(up["latency_ms"], 1),
                readings=readings,
                errors=int(bad.get(meter, [{}])[0].get("n") or 0),
                suspect=int(suspect.get(meter, [{}])[0].get("n") or 0),
                completeness=round(min(100.0, 100.0 * readings / expected), 1) if expected else 0,
            )
        )
    return states


def gateway_states(db: InfluxQL, now_ms: int, since_s: int) -> list[dict[str, Any]]:
    """Per gateway: utilisation at its last tick and the most over the window, late jobs."""
    window = f"time >= {now_ms - since_s * 1000}ms AND time <= {now_ms}ms"
    series = db.query(
        'SELECT last("utilisation") AS "utilisation", max("utilisation") AS "utilisation_max", '
        f'sum("late") AS "late" FROM "gateway_status" WHERE {window} GROUP BY "gateway"'
    )
    out = []
    for s in sorted(series, key=lambda s: s.tags.get("gateway", "")):
        row = s.rows[0]
        out.append(
            {
                "gateway": s.tags.get("gateway", ""),
                "utilisation": row["utilisation"],
                "utilisation_max": row["utilisation_max"],
                "late": int(row["late"] or 0),
            }
        )
    return out


def api_url(settings: StatusSettings) -> tuple[str, dict[str, str]]:
    """The management API's URL (credentials taken out) and its authorization header."""
    given = settings.rabbitmq_api_url
    amqp = urllib.parse.urlsplit(settings.amqp_url)
    if given:
        parts = urllib.parse.urlsplit(given)
        user, password = parts.username, parts.password
        netloc = parts.hostname or ""
        netloc += f":{parts.port}" if parts.port else ""
        url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    else:
        user, password = amqp.username or "guest", amqp.password or "guest"
        url = f"http://{amqp.hostname}:{MANAGEMENT_PORT}/api"
    headers = {}
    if user is not None:
        login = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(login.encode()).decode()
    return url.rstrip("/"), headers


def queue_depths(settings: StatusSettings) -> Queues:
    """The system's queues in the vhost of `EMM_AMQP_URL`: the 64 job shards added up."""
    url, headers = api_url(settings)
    vhost = urllib.parse.unquote(urllib.parse.urlsplit(settings.amqp_url).path[1:] or "/")
    columns = "name,messages,messages_ready,messages_unacknowledged,consumers"
    where = f"{url}/queues/{urllib.parse.quote(vhost, safe='')}?columns={columns}"
    http = urllib3.PoolManager(timeout=urllib3.Timeout(total=API_TIMEOUT_S), retries=False)
    try:
        response = http.request("GET", where, headers=headers)
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        # urllib3 puts the socket's reason last: "...: [Errno 111] Connection refused"
        return Queues(url, False, f"not reachable: {str(exc).rsplit(': ', 1)[-1]}")
    finally:
        http.clear()
    if response.status != 200:
        return Queues(url, False, f"not reachable: HTTP {response.status}")
    try:
        listed = json.loads(response.data)
    except ValueError:
        return Queues(url, False, "not reachable: the answer is not JSON")
    return Queues(url, True, queues=_queues(listed))


def _queues(listed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = ("messages", "messages_ready", "messages_unacknowledged", "consumers")
    out: dict[str, dict[str, Any]] = {}
    for q in listed:
        name = q.get("name", "")
        if not name.startswith("emm."):
            continue
        shard = name.startswith("emm.jobs.") and name.rsplit(".", 1)[1].isdigit()
        key = "emm.jobs (shards)" if shard else name
        entry = out.setdefault(key, {"name": key, **dict.fromkeys(keys, 0)})
        for k in keys:
            entry[k] += int(q.get(k) or 0)
    return [out[k] for k in sorted(out)]


def _ago(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _print(
    meters: list[MeterState],
    gateways: list[dict[str, Any]],
    queues: Queues,
    since: str,
    expected: int,
    cron: CronSchedule,
) -> None:
    print(f"meters (last {since}: {expected} ticks of {cron.expression})")
    print_table(
        ["meter", "state", "last reading", "age_s", "latency_ms", "errors", "suspect", "complete"],
        [
            [
                m.meter_id,
                m.state,
                _ago(m.last_reading_ms),
                f"{m.age_s:.0f}" if m.age_s is not None else "-",
                "-" if m.latency_ms is None else f"{m.latency_ms:.1f}",
                m.errors,
                m.suspect,
                f"{m.completeness:.1f} %",
            ]
            for m in meters
        ]
        or [["-"] * 8],
    )
    print(f"\ngateways (last {since})")
    print_table(
        ["gateway", "utilisation", "max", "late"],
        [
            [g["gateway"], f"{g['utilisation']:.3f}", f"{g['utilisation_max']:.3f}", g["late"]]
            for g in gateways
        ]
        or [["-"] * 4],
    )
    print(f"\nqueues ({queues.api_url})")
    if not queues.reachable:
        print(queues.error)
        return
    print_table(
        ["queue", "messages", "ready", "unacked", "consumers"],
        [
            [
                q["name"],
                q["messages"],
                q["messages_ready"],
                q["messages_unacknowledged"],
                q["consumers"],
            ]
            for q in queues.queues
        ]
        or [["-"] * 5],
    )
