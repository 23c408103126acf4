"""`emm writer` / `python -m writer`."""

from __future__ import annotations

import argparse

from emm import metrics
from emm.errors import ConfigError
from emm.log import setup_logging
from emm.service import exit_with, serve
from emm.settings import WriterSettings
from writer.app import run


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="emm writer",
        description="Write the readings in emm.readings to InfluxDB."
        " Settings come from EMM_* environment variables.",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the service with settings from the environment."""
    _parse_args(argv)
    try:
        settings = WriterSettings.from_env()
    except ConfigError as exc:
        exit_with("writer", exc)
    setup_logging(settings.log_level, "writer", settings.log_format)
    metrics.serve(settings.metrics_port)
    serve("writer", lambda stop: run(settings, stop), event_loop=settings.event_loop)


if __name__ == "__main__":
    main()
