"""`emm read`: read a device once as a worker reads it, and print its values.

The register map is the type's rows in PostgreSQL when the database is reachable and has them
(what the scheduler would send), else the shipped profile; a line on stderr says which. The read
is the worker's (`read_device`, the one place this module calls the worker): the same retries,
hole splitting and error codes as a reading's `meter_status`. A device that cannot be reached,
or never answers, is one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from cli.args import DEFAULT_PORT
from emm.errors import ConfigError, DatabaseError, Misconfigured, TransientDeviceError
from emm.log import setup_logging
from emm.messages import Job, Meter, Reading
from emm.plan import Plan
from emm.planner import ReadLimits
from emm.profiles import shipped_profile
from emm.registers import Register
from emm.settings import MigrateSettings, WorkerSettings
from worker.budget import GatewayLoad
from worker.device import Device
from worker.health import Health, OfflinePolicy
from worker.holes import Holes
from worker.modbus import DeviceLink, GatewayLinks
from worker.reader import read_job

# As many tries per request as a worker makes by default (EMM_READ_ATTEMPTS).
ATTEMPTS: int = WorkerSettings.model_fields["read_attempts"].default
# The time the reads may take in all, as a worker has one tick of the default cron.
BUDGET_S = 60.0


@dataclass(frozen=True)
class RegisterMap:
    """The registers `emm read` reads, their read limits and where they come from."""

    type: str
    registers: tuple[Register, ...]
    limits: ReadLimits
    origin: str


def register_map(type_: str) -> RegisterMap:
    """The type's rows in PostgreSQL when it is reachable and has them, else the shipped
    profile; raises ConfigError when neither has the type."""
    dsn = MigrateSettings.from_env().postgres_dsn
    not_used = ""
    try:
        from postgres.config import load_type
        from postgres.connection import connect

        with connect(dsn, timeout_s=2) as conn:
            registers, limits, errors = load_type(conn, type_)
    except (DatabaseError, Misconfigured) as exc:  # no schema: the shipped profile still is
        registers, limits, errors = (), ReadLimits(), []
        not_used = f"PostgreSQL not used: {exc}"
    for error in errors:
        print(f"warning: {error}", file=sys.stderr)
    if registers:
        return RegisterMap(
            type_, registers, limits, f"{type_} from PostgreSQL ({len(registers)} rows)"
        )
    profile = shipped_profile(type_)
    if profile is not None:
        origin = f"{type_} from the shipped profile {profile.path}"
        return RegisterMap(
            type_,
            profile.registers,
            profile.limits,
            origin + (f" ({not_used})" if not_used else ""),
        )
    if not_used:
        raise ConfigError(f"type {type_!r} is not a shipped profile ({not_used})")
    raise ConfigError(f"type {type_!r} is neither a shipped profile nor in the registers table")


def address(host: str, port: int) -> str:
    """`host:port`, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _connectable(host: str, port: int, timeout_s: float) -> None:
    """Raise TransientDeviceError("cannot connect to H:P: <the system's reason>") unless a TCP
    connection opens within `timeout_s` (pymodbus reports a failed connect without its reason)."""
    where = address(host, port)
    try:
        async with asyncio.timeout(timeout_s):
            _reader, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        raise TransientDeviceError(
            f"cannot connect to {where}: no connection within {timeout_s:g} s", code="unreachable"
        ) from None
    except OSError as exc:
        if isinstance(exc, socket.gaierror) or not exc.errno:
            reason = exc.strerror or str(exc)
        else:
            reason = os.strerror(exc.errno)
        raise TransientDeviceError(
            f"cannot connect to {where}: {reason}", code="unreachable"
        ) from None
    writer.close()
    await writer.wait_closed()


class _RecordingLink(DeviceLink):
    """The worker's link to a device, keeping each answered word by (function code, address)
    for `--raw`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.words: dict[tuple[int, int], int] = {}

    async def read(
        self,
        function_code: int,
        address: int,
        count: int,
        unit_id: int,
        *,
        timeout_s: float | None = None,
    ) -> list[int]:
        words = await super().read(function_code, address, count, unit_id, timeout_s=timeout_s)
        for offset, word in enumerate(words):
            self.words[(function_code, address + offset)] = word
        return words


class _RecordingGateway(GatewayLinks):
    """The worker's connections to the device's gateway, each one a `_RecordingLink`."""

    link_type = _RecordingLink

    def words(self) -> dict[tuple[int, int], int]:
        """Every word the device answered, by (function code, address)."""
        return {
            key: word
            for link in self.links
            if isinstance(link, _RecordingLink)
            for key, word in link.words.items()
        }


@dataclass
class Result:
    """What one read gave: the worker's reading and the words the device answered."""

    reading: Reading
    words: dict[tuple[int, int], int] = field(default_factory=dict)


async def read_device(
    host: str, port: int, unit_id: int, type_: str, plan: Plan, timeout_s: float
) -> Result:
    """Read `plan` from the device once, as a worker reads a job of it (the one adapter to the
    worker's API: `read_job` on a `Device` of its `GatewayLinks`, `Health`, `Holes` and load).

    Raises TransientDeviceError when no TCP connection opens within `timeout_s`.
    """
    await _connectable(host, port, timeout_s)
    gateway = _RecordingGateway(host, port, timeout_s=timeout_s, connect_timeout_s=timeout_s)
    device = Device(
        (host, port, unit_id),
        gateway,
        Health(OfflinePolicy(offline_after_ticks=1, backoff_max_s=0)),
        Holes(),
        GatewayLoad(host, port),
    )
    now_ms = int(time.time() * 1000)
    job = Job(
        meter=Meter(id=0, host=host, port=port, unit_id=unit_id, type=type_),
        tick_ms=now_ms,
        deadline_ms=now_ms + int(BUDGET_S * 1000),
        plan=plan,
    )
    try:
        reading = await read_job(job, device, attempts=ATTEMPTS)
    finally:
        gateway.close()
    if reading is None:  # cannot happen with one job and a budget of BUDGET_S; say so if it does
        raise TransientDeviceError(f"{host}:{port}: no connection within {BUDGET_S:g} s")
    return Result(reading, gateway.words())


def run(args: argparse.Namespace) -> int:
    """Read the device once and print its values; exit code 1 if any failed."""
    setup_logging("WARNING", "read")
    host, port = args.host
    if port is not None and args.port is not None and port != args.port:
        raise ConfigError(f"--host gives port {port} and --port {args.port}: give one")
    port = port or args.port or DEFAULT_PORT
    regs = register_map(args.type)
    print(f"register map: {regs.origin}", file=sys.stderr)
    plan = Plan.build(regs.registers, regs.limits)
    try:
        result = asyncio.run(read_device(host, port, args.unit, args.type, plan, args.timeout))
    except TransientDeviceError as exc:
        print(f"emm read: {exc}", file=sys.stderr)
        return 1
    status = result.reading.status
    if not status.up:
        # Nothing answered: one line, not one per register.
        tries = f" ({status.requests} tries)" if status.requests > 1 else ""
        print(f"emm read: {status.error}{tries}", file=sys.stderr)
        return 1
    _print_table(regs.registers, result, raw=args.raw)
    read = len(result.reading.fields) + len(result.reading.text)
    summary = f"{status.requests} request(s), {read} of {len(regs.registers)} values read"
    if status.error_code:
        summary += f"; first error ({status.error_code}): {status.error}"
    print(summary, file=sys.stderr)
    return 1 if status.error_code else 0


def format_value(value: float) -> str:
    """The value with every digit it has: the shortest text that reads back as the same float."""
    return repr(float(value))


def _print_table(registers: tuple[Register, ...], result: Result, *, raw: bool) -> None:
    reading = result.reading
    missing = set(reading.missing)
    rows: list[list[str]] = []
    for reg in registers:
        if reg.name in reading.fields:
            value = format_value(reading.fields[reg.name])
        elif reg.name in reading.text:
            value = reading.text[reg.name] or '""'
        elif reg.name in missing:
            value = "n/a"
        else:
            value = "error"
        row = [reg.name, value, reg.unit]
        if raw:
            words = [result.words.get((reg.function_code, a)) for a in range(reg.address, reg.end)]
            hex_ = " ".join("----" if w is None else f"{w:04X}" for w in words)
            row += [str(reg.function_code), str(reg.address), hex_]
        if value == "error":
            row.append(reading.errors.get(reg.name, ""))
        rows.append(row)
    header = ["name", "value", "unit"] + (["fc", "address", "raw"] if raw else [])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = {1, 3, 4}  # numbers
    for row in [header, *rows]:
        # an error's reason, past the last column, is left as it is
        cells = [
            cell
            if i >= len(widths)
            else cell.rjust(widths[i])
            if i in right
            else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        print("  ".join(cells).rstrip())
