"""`emm worker` / `python -m worker`."""

from __future__ import annotations

import argparse

from emm import metrics
from emm.errors import ConfigError
from emm.log import setup_logging
from emm.service import STOP_GRACE_S, exit_with, serve
from emm.settings import WorkerSettings
from worker.app import run


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="emm worker",
        description="Read devices for the jobs in emm.jobs."
        " Settings come from EMM_* environment variables.",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the service with settings from the environment."""
    _parse_args(argv)
    try:
        settings = WorkerSettings.from_env()
    except ConfigError as exc:
        exit_with("worker", exc)
    setup_logging(settings.log_level, "worker", settings.log_format)
    metrics.serve(settings.metrics_port)
    serve(
        "worker",
        lambda stop: run(settings, stop),
        event_loop=settings.event_loop,
        grace_s=settings.drain_s + STOP_GRACE_S,
    )


if __name__ == "__main__":
    main()
