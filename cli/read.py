"""`emm read`: read a device once through the planner and codec the worker uses, print a table."""

from __future__ import annotations

import argparse
import asyncio
import sys

from emm.codec import RequestDecoder
from emm.errors import ConfigError, DecodeError, DeviceError
from emm.log import setup_logging
from emm.planner import ReadLimits, assign, plan
from emm.profiles import shipped_profile
from emm.registers import Register
from worker.modbus import DeviceLink


def _registers_for(type_: str) -> tuple[tuple[Register, ...], ReadLimits]:
    """A shipped profile's map, or else the type's rows in PostgreSQL read as the scheduler
    reads them (same validation, same read limits)."""
    profile = shipped_profile(type_)
    if profile is not None:
        return profile.registers, profile.limits
    from emm.settings import MigrateSettings
    from postgres.config import load_type
    from postgres.connection import connect

    with connect(MigrateSettings.from_env().postgres_dsn) as conn:
        registers, limits, errors = load_type(conn, type_)
    for error in errors:
        print(f"warning: {error}", file=sys.stderr)
    if not registers:
        raise ConfigError(f"type {type_!r} is neither a shipped profile nor in the registers table")
    return registers, limits


def run(args: argparse.Namespace) -> int:
    """Read the device once and print its values; exit code 1 if any failed."""
    setup_logging("WARNING", "read")
    return asyncio.run(read_once(args))


async def read_once(args: argparse.Namespace) -> int:
    """Read every register of `args.type` from the device once; exit code 1 if any failed."""
    registers, limits = _registers_for(args.type)
    requests = plan(registers, limits)
    link = DeviceLink(args.host, args.port, timeout_s=args.timeout, connect_timeout_s=args.timeout)
    rows: list[tuple[str, str, str, str]] = []
    failed = 0
    try:
        for request, covered in assign(requests, registers):
            decoder = RequestDecoder.build(request.address, request.count, covered)
            try:
                words = await link.read(
                    request.function_code, request.address, request.count, args.unit
                )
                values, missing = decoder.decode(words)
            except (DeviceError, DecodeError) as exc:
                failed += len(covered)
                for reg in covered:
                    rows.append((reg.name, "error", reg.unit, str(exc)))
                continue
            for reg in covered:
                raw = ""
                if args.raw:
                    offset = reg.address - request.address
                    raw = " ".join(f"{w:04X}" for w in words[offset : offset + reg.data_type.words])
                if reg.name in missing:
                    rows.append((reg.name, "n/a", reg.unit, raw))
                else:
                    rows.append((reg.name, f"{values[reg.name]:.6g}", reg.unit, raw))
    finally:
        link.close()
    width = max([len("name")] + [len(r[0]) for r in rows])
    header = f"{'name':<{width}}  {'value':>14}  {'unit':<6}"
    print((header + ("  raw" if args.raw else "")).rstrip())
    for name, value, unit, extra in rows:
        line = f"{name:<{width}}  {value:>14}  {unit:<6}"
        if args.raw or value == "error":
            line += f"  {extra}"
        print(line.rstrip())
    print(
        f"{len(requests)} request(s), {len(rows) - failed} of {len(rows)} values read",
        file=sys.stderr,
    )
    return 1 if failed else 0
