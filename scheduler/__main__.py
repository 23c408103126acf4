"""`emm scheduler` / `python -m scheduler`."""

from __future__ import annotations

import argparse

from emm import metrics
from emm.errors import ConfigError
from emm.log import setup_logging
from emm.service import exit_with, serve
from emm.settings import SchedulerSettings
from scheduler.app import run


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="emm scheduler",
        description="Publish one read job per meter on every EMM_READ_CRON tick."
        " Settings come from EMM_* environment variables.",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the service with settings from the environment."""
    _parse_args(argv)
    try:
        settings = SchedulerSettings.from_env()
    except ConfigError as exc:
        exit_with("scheduler", exc)
    setup_logging(settings.log_level, "scheduler", settings.log_format)
    metrics.serve(settings.metrics_port)
    serve("scheduler", lambda stop: run(settings, stop), event_loop=settings.event_loop)


if __name__ == "__main__":
    main()
