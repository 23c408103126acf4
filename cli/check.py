"""`emm check`: the whole configuration in PostgreSQL judged at once, every problem one line.

What the scheduler would skip (a meter, register, type or gateway row it cannot use, a meter
whose type has no registers), named by its row; a type without registers; a meter whose type
is a shipped profile never loaded; and a gateway whose pauses alone fill more of each tick than
its budget allows (`emm.budget`: the estimate the worker's `gateway_status` measures against).
Exit status 0 when there is nothing to say, 78 when there is a problem.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from dataclasses import dataclass

from emm.budget import WARN_ABOVE, least_busy_ms, utilisation
from emm.config import MeterConfig, Row, build_config
from emm.planner import plan as plan_requests
from emm.profiles import shipped_profiles
from emm.schedule import CronSchedule
from emm.service import EXIT_CONFIG
from emm.settings import CheckSettings
from postgres.config import load_rows
from postgres.connection import connect, describe


@dataclass(frozen=True)
class Verdict:
    """What `emm check` found: the problems, one line each, and what it looked at."""

    problems: list[str]
    meters: int
    types: int
    gateways: int


def judge(rows: list[Row], shipped: set[str], default_cron: CronSchedule, now_ms: int) -> Verdict:
    """Every problem of the configuration `rows` (pure: no database access)."""
    with_registers = {data["type"] for kind, data in rows if kind == "register"}
    types = sorted({data["type"] for kind, data in rows if kind == "type"})
    problems: list[str] = []
    kept: list[Row] = []
    for kind, data in rows:
        # a meter of a shipped type never imported: say how to load it, not only that the
        # type has no registers
        if kind == "meter" and data["type"] in shipped and data["type"] not in with_registers:
            problems.append(
                f"energy_meters row id={data['id']}: type {data['type']!r} is a shipped profile "
                f"not loaded into PostgreSQL: run `emm profiles import {data['type']}`"
            )
        else:
            kept.append((kind, data))
    config = build_config(kept)
    problems += config.errors
    for type_ in types:
        if type_ not in with_registers:
            fix = f": run `emm profiles import {type_}`" if type_ in shipped else ""
            problems.append(f"meter_types row {type_!r}: no rows in registers{fix}")
    problems += _over_budget(config.meters, default_cron, now_ms)
    gateways = {(data["host"], data["port"]) for kind, data in rows if kind == "gateway"}
    meters = sum(1 for kind, _ in rows if kind == "meter")
    return Verdict(problems, meters, len(types), len(gateways))


def _over_budget(meters: list[MeterConfig], default_cron: CronSchedule, now_ms: int) -> list[str]:
    """A line per gateway whose pauses alone take more than WARN_ABOVE of its ticks."""
    by_gateway: dict[tuple[str, int], list[MeterConfig]] = defaultdict(list)
    for m in meters:
        by_gateway[(m.meter.host, m.meter.port)].append(m)
    out = []
    counts: dict[tuple[int, object], int] = {}  # a type's requests, planned once
    for (host, port), group in sorted(by_gateway.items()):
        gateway = group[0].gateway
        if not gateway.pause_between_requests_ms:
            continue
        requests = busy_per_s = 0.0
        for m in group:
            key = (id(m.registers), m.limits)  # a type's meters share its registers' tuple
            if key not in counts:
                counts[key] = len(plan_requests(m.registers, m.limits))
            count = counts[key]
            cron = m.read_cron or default_cron
            period_ms = cron.period_after(cron.next_after(now_ms))
            requests += count
            busy_per_s += least_busy_ms(count, gateway.pause_between_requests_ms) / period_ms
        # busy time per unit of time over the connections: the same share as per tick
        share = utilisation(busy_per_s, 1.0, gateway.max_connections)
        if share > WARN_ABOVE:
            out.append(
                f"gateways row {host}:{port}: over budget: its pauses alone take {share:.0%} of "
                f"each tick (more than {WARN_ABOVE:.0%}): {len(group)} meter(s), "
                f"{requests:.0f} requests a tick, pause_between_requests_ms="
                f"{gateway.pause_between_requests_ms}, max_connections="
                f"{gateway.max_connections}; spread its meters, shorten the pause or read less "
                "often"
            )
    return out


def run(_args: argparse.Namespace) -> int:
    """Judge the configuration in EMM_POSTGRES_DSN; print the problems on stdout, a summary
    on stderr."""
    settings = CheckSettings.from_env()
    with connect(settings.postgres_dsn, timeout_s=5) as conn:
        rows = load_rows(conn)
    cron = CronSchedule(settings.read_cron, setting="EMM_READ_CRON")
    verdict = judge(rows, {p.type for p in shipped_profiles()}, cron, int(time.time() * 1000))
    for problem in verdict.problems:
        print(problem)
    looked = (
        f"{verdict.meters} enabled meter(s), {verdict.types} type(s), "
        f"{verdict.gateways} gateway row(s) in {describe(settings.postgres_dsn)}"
    )
    if verdict.problems:
        print(f"{len(verdict.problems)} problem(s) in {looked}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"no problems in {looked}", file=sys.stderr)
    return 0
