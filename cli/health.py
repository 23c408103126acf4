"""`emm health SERVICE`: whether a service on this machine makes progress, for a compose
healthcheck or a Kubernetes exec probe. One line on stdout, exit 0 (healthy) or 1."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from emm.health import check, default_path

SERVICES = ("scheduler", "worker", "writer", "simulator")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `health` subcommand."""
    h = sub.add_parser(
        "health",
        help="whether a service makes progress (exit 0) or not (exit 1), in one line",
        description="Read the health file a service rewrites every 2 s (EMM_HEALTH_FILE) and "
        "say in one line whether it is healthy: its event loop turns, and work that waits "
        "(a due tick, jobs in flight, readings held) was done within EMM_HEALTH_STALL_S. "
        "Exit 0 when healthy, 1 when not.",
    )
    h.add_argument("service", choices=SERVICES, metavar="SERVICE", help=", ".join(SERVICES))
    h.add_argument(
        "--file",
        metavar="PATH",
        help="the health file (default EMM_HEALTH_FILE, else emm-SERVICE.health in the "
        "temporary folder)",
    )


def run(args: argparse.Namespace) -> int:
    setting = os.environ.get("EMM_HEALTH_FILE", "").strip()
    path = Path(args.file or setting or default_path(args.service))
    healthy, why = check(path, args.service)
    print(why)
    return 0 if healthy else 1
