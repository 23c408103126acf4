"""Logging set-up shared by every service: one line per event on stderr, as text or as JSON.

`EMM_LOG_FORMAT=text` (the default), for people:

    2026-03-01T12:00:02.123Z WARNING worker worker.consumer: meter 7 (...) tick ...: timeout;
    1 of 2 registers not read: voltageL1 meter_id=7 gateway=10.0.0.5:502
    tick=2026-03-01T12:00:00+00:00 error_code=timeout        (one line, wrapped here)

`EMM_LOG_FORMAT=json`, for log collectors: one JSON object per line, keys in this order:

    ts          the event's time, UTC, ISO 8601 with its zone (`Z`), to the millisecond
    level       DEBUG, INFO, WARNING, ERROR or CRITICAL
    service     scheduler, worker, writer, simulator, migrate, ...
    logger      the module that logged (`worker.consumer`)
    message     the text of the line
    meter_id, gateway, tick, error_code    only those the event knows (CONTEXT)
    exc         the traceback, when the event carries one

An event's context comes from the log call: `log.warning("...", extra=context(meter_id=7,
gateway="10.0.0.5:502", tick_ms=job.tick_ms))`. Only the CONTEXT keys are written, so the set of
keys is stable; the text format appends the same ones as `key=value` (a value with spaces,
quotes or `=` is quoted). A message is always one line: characters that could break it are
escaped (`emm.text.one_line`); only a traceback, which follows its line, spans several.

Python's warnings go through the same log (logger `py.warnings`, level WARNING), one line each.
What a service says about itself follows one pattern: at start, where it connects (`amqp_where`,
`postgres_where`, `influx_where`: host, port, database or vhost and user, never a password);
its first success; a `Summary` of what it did every EMM_LOG_SUMMARY_S and one at stop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import time
import urllib.parse
import warnings
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from emm.errors import EmmError
from emm.text import one_line

LogFormat = Literal["text", "json"]

# The context keys an event may carry, in the order they are written.
CONTEXT = ("meter_id", "gateway", "tick", "error_code")

_PLAIN = re.compile(r"[^\s\"'=\\]+")


def context(
    *,
    meter_id: int | None = None,
    gateway: str | None = None,
    tick_ms: int | None = None,
    error_code: str | None = None,
) -> dict[str, object]:
    """`extra=` for a log call: the CONTEXT an event knows (None and "" left out); the tick is
    written as ISO 8601 UTC to the second."""
    tick = None if tick_ms is None else _utc(tick_ms / 1000, "seconds")
    values = {"meter_id": meter_id, "gateway": gateway, "tick": tick, "error_code": error_code}
    return {key: value for key, value in values.items() if value not in (None, "")}


def error_code(error: BaseException) -> str:
    """A short machine-readable name for `error`: a device error's own code (`timeout`), else
    its class in snake case (`sink_rejected`), or `internal_error` for one that is not ours."""
    code = getattr(error, "code", None)
    if isinstance(code, str):
        return code
    if not isinstance(error, EmmError):
        return "internal_error"
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(error).__name__).lower()


def _utc(seconds: float, timespec: str) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec=timespec)


def _timestamp(record: logging.LogRecord) -> str:
    # `Z` rather than `+00:00`: what log tools and people read as UTC at a glance
    return _utc(record.created, "milliseconds").removesuffix("+00:00") + "Z"


def _context(record: logging.LogRecord) -> dict[str, Any]:
    return {key: getattr(record, key) for key in CONTEXT if getattr(record, key, None) is not None}


class TextFormatter(logging.Formatter):
    """`<time> <LEVEL> <service> <logger>: <message> key=value ...`, then any traceback."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname} {self.service} {record.name}: "
        # one line, whatever the message quotes (a newline in a device's host, say)
        line += one_line(record.getMessage())
        for key, value in _context(record).items():
            text = str(value)
            line += f" {key}={text if _PLAIN.fullmatch(text) else json.dumps(text)}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per event, on one line (control characters and newlines escaped)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
            **_context(record),
        }
        if record.exc_info:
            event["exc"] = self.formatException(record.exc_info)
        # ASCII only: a lone surrogate in a message cannot break the line's encoding.
        return json.dumps(event, default=str)


def _log_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    logging.getLogger("py.warnings").warning(
        "%s: %s (%s:%d)", category.__name__, message, filename, lineno
    )


def setup_logging(level: str = "INFO", service: str = "emm", fmt: LogFormat = "text") -> None:
    """Send the service's log at `level` and above to stderr, one line per event in `fmt`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else TextFormatter(service))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # A library's warning becomes one line of ours instead of Python's two on stderr.
    warnings.showwarning = _log_warning
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


def amqp_where(url: str) -> str:
    """`RabbitMQ HOST:PORT vhost V as USER` for `EMM_AMQP_URL`, without its password."""
    parts = urllib.parse.urlsplit(url)
    port = _port(parts) or (5671 if parts.scheme.lower() == "amqps" else 5672)
    vhost = urllib.parse.unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    user = urllib.parse.unquote(parts.username or "guest")
    return f"RabbitMQ {parts.hostname}:{port} vhost {vhost} as {user}"


_LIBPQ_PAIR = re.compile(r"(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|\S*)")


def postgres_where(dsn: str) -> str:
    """`PostgreSQL HOST:PORT database D as USER` for `EMM_POSTGRES_DSN` (a URL or libpq
    key=value pairs), without its password."""
    if "://" in dsn:
        parts = urllib.parse.urlsplit(dsn)
        query = dict(urllib.parse.parse_qsl(parts.query))
        host = parts.hostname or query.get("host", "localhost")
        port = _port(parts) or query.get("port", 5432)
        database = urllib.parse.unquote(parts.path[1:]) or query.get("dbname", "")
        user = urllib.parse.unquote(parts.username or query.get("user", ""))
    else:
        pairs = {k: v.strip("'") for k, v in _LIBPQ_PAIR.findall(dsn)}
        host, port = pairs.get("host", "localhost"), pairs.get("port", 5432)
        database, user = pairs.get("dbname", ""), pairs.get("user", "")
    user = user or "(default)"
    return f"PostgreSQL {host}:{port} database {database or user} as {user}"


def influx_where(url: str, api: str, bucket: str, org: str = "") -> str:
    """`InfluxDB URL (API v1, database B)` or `(API v2, org O, bucket B)`, the URL without
    credentials."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    shown = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    if api == "v1":
        return f"InfluxDB {shown} (API v1, database {bucket})"
    return f"InfluxDB {shown} (API v2, org {org or '-'}, bucket {bucket})"


def _port(parts: urllib.parse.SplitResult) -> int | None:
    try:
        return parts.port
    except ValueError:
        return None


class Summary:
    """What a service did, as one INFO line every `period_s` (what it did since the line
    before) and one at stop (what it did since it started).

    `counts` gives the running totals by name (`{"jobs": 120, ...}`), in the order written.
    """

    def __init__(
        self,
        logger: logging.Logger,
        counts: Callable[[], Mapping[str, float]],
        period_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.counts = counts
        self.period_s = period_s
        self.clock = clock
        self.started = self.last_at = clock()
        self.last: Mapping[str, float] = {}

    def line(self) -> str:
        """`last N s: name value, ...`: the counts since the previous line; moves on."""
        now, counts = self.clock(), dict(self.counts())
        text = f"last {now - self.last_at:.0f} s: " + _pairs(counts, self.last)
        self.last_at, self.last = now, counts
        return text

    def final(self) -> str:
        """`after N s: name value, ...`: the counts since the start."""
        return f"after {self.clock() - self.started:.0f} s: " + _pairs(self.counts(), {})

    async def run(self, stop: asyncio.Event) -> None:
        """Log `summary, <line>` every `period_s` until `stop` is set."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.period_s)
            except TimeoutError:
                self.logger.info("summary, %s", self.line())


def _pairs(counts: Mapping[str, float], before: Mapping[str, float]) -> str:
    return ", ".join(f"{name} {value - before.get(name, 0):.0f}" for name, value in counts.items())
