"""emm.log: the text line with its `key=value` context, and one JSON object per line."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from datetime import datetime

import pytest

from emm.errors import ConfigError, MessageError, SinkRejected, TransientDeviceError
from emm.log import (
    CONTEXT,
    JsonFormatter,
    Summary,
    amqp_where,
    context,
    error_code,
    influx_where,
    postgres_where,
    setup_logging,
)
from emm.messages import Meter
from emm.settings import WorkerSettings
from worker.health import Health, OfflinePolicy

TICK_MS = 1_772_366_400_000  # 2026-03-01T12:00:00Z


@contextlib.contextmanager
def captured() -> Iterator[io.StringIO]:
    """What the root logger writes once `setup_logging` ran in this block (stderr swapped for a
    buffer); the logging set-up from before the block is restored after it."""
    root = logging.getLogger()
    level, handlers = root.level, root.handlers[:]
    buffer = io.StringIO()
    real, sys.stderr = sys.stderr, buffer
    try:
        yield buffer
    finally:
        sys.stderr = real
        root.handlers[:] = handlers
        root.setLevel(level)


def _lines(buffer: io.StringIO) -> list[str]:
    return buffer.getvalue().splitlines()


FULL = context(meter_id=7, gateway="10.0.0.5:502", tick_ms=TICK_MS, error_code="timeout")


def test_context_leaves_out_what_is_unknown_and_writes_the_tick_in_utc() -> None:
    assert FULL == {
        "meter_id": 7,
        "gateway": "10.0.0.5:502",
        "tick": "2026-03-01T12:00:00+00:00",
        "error_code": "timeout",
    }
    assert tuple(FULL) == CONTEXT
    assert context(meter_id=3, error_code="") == {"meter_id": 3}
    assert context() == {}


def test_json_is_one_object_per_line_with_stable_keys() -> None:
    with captured() as out:
        setup_logging("INFO", "worker", "json")
        log = logging.getLogger("worker.consumer")
        log.warning("meter %d: %s", 7, "timeout", extra=FULL)
        log.info("worker started")
        log.debug("not at INFO")
    first, second = (json.loads(line) for line in _lines(out))
    assert list(first) == ["ts", "level", "service", "logger", "message", *CONTEXT]
    assert first["level"] == "WARNING"
    assert (first["service"], first["logger"]) == ("worker", "worker.consumer")
    assert first["message"] == "meter 7: timeout"
    assert first["meter_id"] == 7 and first["tick"] == "2026-03-01T12:00:00+00:00"
    assert first["gateway"] == "10.0.0.5:502" and first["error_code"] == "timeout"
    assert list(second) == ["ts", "level", "service", "logger", "message"]
    stamp = datetime.fromisoformat(second["ts"])
    assert stamp.utcoffset() is not None and stamp.utcoffset().total_seconds() == 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", second["ts"])


def test_json_keeps_each_event_on_one_line() -> None:
    with captured() as out:
        setup_logging("INFO", "writer", "json")
        log = logging.getLogger("writer.app")
        try:
            raise ValueError("two\nlines")
        except ValueError:
            log.exception("forged\nline \x1b[31m and a lone surrogate \ud800")
        log.info("extra keys outside the context are not written", extra={"password": "x"})
    lines = _lines(out)
    assert len(lines) == 2
    event = json.loads(lines[0])
    assert event["message"] == "forged\nline \x1b[31m and a lone surrogate \ud800"
    assert "ValueError: two\nlines" in event["exc"]
    assert lines[0].isascii()
    assert "password" not in json.loads(lines[1])


def test_text_appends_the_context_as_key_value() -> None:
    with captured() as out:
        setup_logging("INFO", "worker")
        log = logging.getLogger("worker.health")
        log.warning("meter 7 offline", extra=FULL)
        log.warning("quoted", extra=context(gateway="a b", error_code='say "x"=y'))
        log.info("no context")
    first, second, third = _lines(out)
    stamp, level, service, rest = first.split(" ", 3)
    assert datetime.fromisoformat(stamp).utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert (level, service) == ("WARNING", "worker")
    assert rest == (
        "worker.health: meter 7 offline meter_id=7 gateway=10.0.0.5:502 "
        "tick=2026-03-01T12:00:00+00:00 error_code=timeout"
    )
    assert second.endswith('quoted gateway="a b" error_code="say \\"x\\"=y"')
    assert third.endswith(" INFO worker worker.health: no context")


def test_text_keeps_the_traceback_below_the_line() -> None:
    with captured() as out:
        setup_logging("INFO", "scheduler", "text")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("scheduler.app").exception("tick failed")
    lines = _lines(out)
    assert lines[0].endswith("ERROR scheduler scheduler.app: tick failed")
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "RuntimeError: boom"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (TransientDeviceError("no answer", code="timeout"), "timeout"),
        (MessageError("job is not valid JSON", b"{"), "message_error"),
        (SinkRejected("InfluxDB rejected the write"), "sink_rejected"),
        (ConfigError("bad row"), "config_error"),
        (KeyError("bug"), "internal_error"),
    ],
)
def test_error_code(error: BaseException, code: str) -> None:
    assert error_code(error) == code


@pytest.mark.parametrize(("value", "expected"), [("JSON", "json"), ("text", "text")])
def test_the_setting(value: str, expected: str) -> None:
    assert WorkerSettings.from_env({"EMM_LOG_FORMAT": value}).log_format == expected


def test_the_default_format_is_text_and_an_empty_setting_is_refused() -> None:
    assert WorkerSettings.from_env({}).log_format == "text"
    with pytest.raises(ConfigError) as info:
        WorkerSettings.from_env({"EMM_LOG_FORMAT": ""})
    assert str(info.value) == (
        "EMM_LOG_FORMAT is set but empty: give it a value, or unset it to use the default"
    )


def test_a_bad_setting_names_what_is_allowed() -> None:
    with pytest.raises(ConfigError) as info:
        WorkerSettings.from_env({"EMM_LOG_FORMAT": "yaml"})
    assert str(info.value) == "EMM_LOG_FORMAT='yaml': must be one of text, json"


def test_a_service_logs_json_when_told() -> None:
    """The simulator (no broker needed) started with EMM_LOG_FORMAT=json: every line is JSON."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMM_")}
    env |= {"EMM_LOG_FORMAT": "json", "EMM_SIMULATOR_HOST": "127.0.0.1", "EMM_SIMULATOR_PORT": "0"}
    env["EMM_METRICS_PORT"] = "0"
    with subprocess.Popen(
        [sys.executable, "-m", "simulator"],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    ) as proc:
        try:
            assert proc.stderr is not None
            first = proc.stderr.readline()
        finally:
            proc.terminate()
            proc.wait(10)
    event = json.loads(first)
    assert event["service"] == "simulator" and event["level"] == "INFO", event


def test_the_workers_offline_line_carries_its_context(caplog: pytest.LogCaptureFixture) -> None:
    meter = Meter(7, "192.0.2.7", 502, 3, "sdm630")
    health = Health(OfflinePolicy(offline_after_ticks=1, backoff_max_s=60))
    with caplog.at_level(logging.WARNING, logger="worker.health"):
        health.record(meter, TICK_MS, 10_000, False, "timeout")
    (record,) = caplog.records
    event = json.loads(JsonFormatter("worker").format(record))
    assert {k: event[k] for k in CONTEXT} == {
        "meter_id": 7,
        "gateway": "192.0.2.7:502",
        "tick": "2026-03-01T12:00:00+00:00",
        "error_code": "timeout",
    }


def test_text_lines_are_stamped_in_utc_with_a_z() -> None:
    with captured() as out:
        setup_logging("INFO", "writer")
        logging.getLogger("writer.app").info("hello")
    (line,) = _lines(out)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO writer writer\.app: hello", line
    )


def test_python_warnings_become_one_log_line() -> None:
    with captured() as out, warnings.catch_warnings():
        setup_logging("INFO", "writer")
        warnings.simplefilter("always")
        lineno = sys._getframe().f_lineno + 1
        warnings.warn("the old way", FutureWarning, stacklevel=1)
    (line,) = _lines(out)
    assert " WARNING writer py.warnings: " in line
    assert line.endswith(f"py.warnings: FutureWarning: the old way ({__file__}:{lineno})")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://emm:s3cret@10.0.0.9:5673/prod", "RabbitMQ 10.0.0.9:5673 vhost prod as emm"),
        ("amqp://guest:guest@127.0.0.1:5672/%2F", "RabbitMQ 127.0.0.1:5672 vhost / as guest"),
        ("amqps://u:p@mq.example", "RabbitMQ mq.example:5671 vhost / as u"),
        ("amqp://127.0.0.1", "RabbitMQ 127.0.0.1:5672 vhost / as guest"),
    ],
)
def test_where_a_service_connects_to_rabbitmq_without_the_password(url: str, shown: str) -> None:
    assert amqp_where(url) == shown


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        (
            "postgresql://emm:s3cret@db:5433/energy",
            "PostgreSQL db:5433 database energy as emm",
        ),
        (
            "postgresql://postgres@127.0.0.1/postgres",
            "PostgreSQL 127.0.0.1:5432 database postgres as postgres",
        ),
        (
            "host=db port=6432 dbname=emm user=sched password='a b'",
            "PostgreSQL db:6432 database emm as sched",
        ),
    ],
)
def test_where_a_service_connects_to_postgresql_without_the_password(dsn: str, shown: str) -> None:
    assert postgres_where(dsn) == shown
    assert "s3cret" not in postgres_where(dsn) and "a b" not in postgres_where(dsn)


def test_where_the_writer_writes_without_credentials() -> None:
    assert influx_where("http://u:pw@influx:8086", "v1", "energy") == (
        "InfluxDB http://influx:8086 (API v1, database energy)"
    )
    assert influx_where("https://cloud.example/", "v2", "energy", "acme") == (
        "InfluxDB https://cloud.example/ (API v2, org acme, bucket energy)"
    )


def test_a_summary_says_what_happened_since_the_last_line_and_in_all() -> None:
    now = [100.0]
    counts = {"jobs": 0.0, "late": 0.0}
    summary = Summary(logging.getLogger("t"), lambda: counts, 300, clock=lambda: now[0])
    now[0], counts["jobs"] = 400.0, 120.0
    assert summary.line() == "last 300 s: jobs 120, late 0"
    now[0], counts["jobs"], counts["late"] = 700.0, 230.0, 2.0
    assert summary.line() == "last 300 s: jobs 110, late 2"
    now[0] = 712.4
    assert summary.final() == "after 612 s: jobs 230, late 2"
