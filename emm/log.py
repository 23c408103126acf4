"""Logging set-up shared by every service: one line per event on stderr.

Each line reads `<time> <LEVEL> <service> <logger>: <message>`; whatever context an event has
(the meter, the queue) is in the message text itself. A message is always one line: characters
that could break it (a newline in a device's host, say) are escaped (`emm.text.one_line`); only
a traceback, which follows its line, spans several.
"""

from __future__ import annotations

import logging
import sys

from emm.text import one_line


class _OneLineFormatter(logging.Formatter):
    """The standard formatter, with the message part escaped to one line."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return one_line(super().formatMessage(record))


def setup_logging(level: str = "INFO", service: str = "emm") -> None:
    """Send the service's log at `level` and above to stderr with time, level and service name."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _OneLineFormatter(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s")
    )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # Library chatter at INFO drowns our own lines (pymodbus logs every reconnect, aio-pika
    # every channel event); their warnings still come through.
    # aio-pika and aiormq log every failed reconnection attempt as an error; `broker` reports
    # losing and regaining the connection itself.
    for quiet in ("aio_pika", "aiormq"):
        logging.getLogger(quiet).setLevel(logging.CRITICAL)
    for noisy in ("urllib3", "influxdb_client"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    # pymodbus logs every timeout and refused connection as an error; the worker reports each
    # failed read itself, once, with the meter it concerns.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
