"""The `emm` command line: the services, `migrate`, `secrets`, `check`, `read`, `probe`,
`profiles`, `report`, `status` and `health`."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
from collections.abc import Sequence

from cli.args import DEFAULT_PORT, bounded, host_port, seconds
from emm.errors import EmmError
from emm.service import exit_code

SERVICES = ("scheduler", "worker", "writer", "simulator")


def _service(name: str, argv: list[str]) -> int:
    """Run a service with its own options; it parses `argv` itself."""
    if name == "scheduler":
        from scheduler.__main__ import main as scheduler

        scheduler(argv)
    elif name == "worker":
        from worker.__main__ import main as worker

        worker(argv)
    elif name == "writer":
        from writer.__main__ import main as writer

        writer(argv)
    else:
        from simulator.__main__ import main as simulator

        simulator(argv)
    return 0


def _version() -> str:
    """The installed package's version."""
    try:
        return importlib.metadata.version("energymonitoring")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The `emm` parser; the services' options are their own parsers' (`emm worker --help`)."""
    parser = argparse.ArgumentParser(
        prog="emm",
        description="Read energy meters over Modbus TCP on a schedule and store them in InfluxDB.",
    )
    parser.add_argument("--version", action="version", version=f"emm {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    m = sub.add_parser("migrate", help="create or upgrade the PostgreSQL schema (idempotent)")
    m.add_argument("--no-seed", action="store_true", help="do not add the virtual meter")
    m.add_argument("--seed-host", help="host of the seeded virtual meter (EMM_SEED_HOST)")
    m.add_argument("--seed-port", type=int, help="port of the seeded virtual meter (EMM_SEED_PORT)")
    m.add_argument(
        "--no-profiles", action="store_true", help="do not load the shipped device profiles"
    )
    m.add_argument(
        "--grant-read",
        metavar="ROLE",
        help="let ROLE (the scheduler's) read the tables and change none",
    )

    sub.add_parser(
        "check",
        help="judge the whole configuration in PostgreSQL; every problem one line",
        description="Judge every enabled meter and every type, register and gateway row in "
        "PostgreSQL (EMM_POSTGRES_DSN) at once: print each problem on one line naming its row "
        "(rows the scheduler would skip, types without registers, shipped profiles not loaded, "
        "gateways over budget). Exit status 0: no problem; 78: problems.",
    )

    for name, text in (
        ("scheduler", "publish one read job per meter on every EMM_READ_CRON tick"),
        ("worker", "read devices for the jobs in emm.jobs"),
        ("writer", "write the readings in emm.readings to InfluxDB"),
        ("simulator", "serve virtual meters over Modbus TCP"),
    ):
        # The service parses its own options (`emm worker --help`).
        sub.add_parser(name, help=text, add_help=False)

    r = sub.add_parser(
        "read",
        help="read a device once, as a worker reads it, and print its values",
        description="Read every register of a type from a device once, with the worker's "
        "retries and hole splitting, and print the values. The register map is the type's rows "
        "in PostgreSQL (EMM_POSTGRES_DSN) when reachable, else the shipped profile.",
    )
    r.add_argument(
        "--host",
        required=True,
        type=host_port,
        metavar="H[:P]",
        help="the device or gateway; H:P or [IPv6]:P gives the port too",
    )
    r.add_argument(
        "--port", type=bounded(1, 65535), metavar="P", help=f"TCP port (default {DEFAULT_PORT})"
    )
    r.add_argument(
        "--unit", type=bounded(0, 255), default=1, metavar="U", help="unit id (default 1)"
    )
    r.add_argument("--type", required=True, help="a type in PostgreSQL or a shipped profile")
    r.add_argument(
        "--raw",
        action="store_true",
        help="also print each value's function code, address and registers in hex",
    )
    r.add_argument(
        "--timeout",
        type=seconds,
        default=2.0,
        metavar="S",
        help="seconds to wait for the connection and for each answer (default 2)",
    )

    s = sub.add_parser(
        "secrets",
        help="make the docker compose stack's secrets in DIR (keeps those already there)",
        description="Make the secrets of deploy/docker-compose.yml under DIR, one folder per "
        "volume, keeping those already there, and write RabbitMQ's definitions (users, "
        "permissions, queues) again.",
    )
    s.add_argument("dir", metavar="DIR", help="where to make them (the volumes' mount points)")
    _add_probe(sub)

    p = sub.add_parser("profiles", help="list, show or import device profiles")
    psub = p.add_subparsers(dest="profiles_command", required=True, metavar="ACTION")
    psub.add_parser("list", help="the shipped profiles and the types in PostgreSQL")
    show = psub.add_parser("show", help="a type's registers (PostgreSQL's rows, else shipped)")
    show.add_argument("type", metavar="TYPE")
    imp = psub.add_parser(
        "import",
        help="load a profile into PostgreSQL, replacing its type's rows",
        description="Load a profile file, or a shipped profile by its type, into PostgreSQL. "
        "Rows that meters use are replaced only with --force.",
    )
    imp.add_argument("profile", metavar="FILE|TYPE", help="a profile .toml file or a shipped type")
    imp.add_argument(
        "--dry-run", action="store_true", help="show the rows that would change; write nothing"
    )
    imp.add_argument(
        "--force", action="store_true", help="replace the rows even though meters use the type"
    )

    from cli.health import add_parser as add_health
    from cli.report import add_parser as add_report
    from cli.status import add_parser as add_status

    add_report(sub)
    add_health(sub)
    add_status(sub)
    return parser


def _add_probe(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`emm probe`: identify a device's register map and layout (reads only)."""
    from cli.probe import DEFAULT_BUDGET, parse_units

    p = sub.add_parser(
        "probe",
        help="identify a device: its SunSpec models, or the shipped profile, order and offset",
        description="Read a device (never writing to it) and tell which register map it "
        "speaks: SunSpec first, else every shipped profile in four byte/word orders and at "
        "address offsets -1/0/+1, scored for plausibility. --write stores a SunSpec device's "
        "map as a type and adds the meter (EMM_POSTGRES_DSN).",
    )
    p.add_argument("--host", required=True, type=host_port, metavar="H[:P]", help="the device")
    p.add_argument(
        "--port", type=bounded(1, 65535), metavar="P", help=f"TCP port (default {DEFAULT_PORT})"
    )
    unit = p.add_mutually_exclusive_group()
    unit.add_argument(
        "--unit", type=bounded(0, 255), default=1, metavar="N", help="unit id (default 1)"
    )
    unit.add_argument(
        "--scan", type=parse_units, metavar="A-B", help="list the unit ids A..B that answer"
    )
    p.add_argument(
        "--framing",
        choices=("tcp", "rtu-over-tcp"),
        default="tcp",
        help="Modbus TCP, or RTU frames through a transparent gateway (default tcp)",
    )
    p.add_argument(
        "--budget",
        type=bounded(1, 10_000),
        default=DEFAULT_BUDGET,
        metavar="N",
        help=f"send at most N requests (default {DEFAULT_BUDGET})",
    )
    p.add_argument(
        "--timeout",
        type=seconds,
        default=1.0,
        metavar="S",
        help="seconds to wait for the connection and for each answer (default 1)",
    )
    p.add_argument(
        "--write",
        action="store_true",
        help="store a SunSpec device's register map as its type and add the meter",
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in SERVICES:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "migrate":
            from cli import migrate

            code = migrate.run(args)
        elif args.command == "secrets":
            from cli import secrets

            code = secrets.run(args)
        elif args.command == "check":
            from cli import check

            code = check.run(args)
        elif args.command == "profiles":
            from cli import profiles

            code = profiles.run(args)
        elif args.command == "read":
            from cli import read

            code = read.run(args)
        elif args.command == "probe":
            from cli import probe

            code = probe.run(args)
        elif args.command == "report":
            from cli import report

            code = report.run(args)
        elif args.command == "health":
            from cli import health

            code = health.run(args)
        elif args.command == "status":
            from cli import status

            code = status.run(args)
        else:
            code = _service(args.command, extra)
    except EmmError as exc:
        print(f"emm {args.command}: {exc}", file=sys.stderr)
        code = exit_code(exc)
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        # `emm read ... | head`: the reader went away; say nothing more on stdout.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = 141
    sys.exit(code)
