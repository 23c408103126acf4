"""The writer's lines while InfluxDB fails: each batch in flight retries on its own, but the same
failure is one line, not one per batch."""

from __future__ import annotations

import logging

import pytest

from emm.errors import SinkUnavailable
from emm.settings import WriterSettings
from writer.app import Writer

pytestmark = pytest.mark.timeout(10)


class _NoSink:
    def write(self, chunks: list[bytes]) -> None:
        raise AssertionError("not written in this test")

    def close(self) -> None:
        pass


def test_batches_failing_make_one_start_line_and_one_end_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    writer = Writer(WriterSettings(retry_max_s=30), sink=_NoSink())
    writer.influx.clock = lambda: now[0]
    writer.influx.wall = lambda: 1_700_000_000.0
    down = SinkUnavailable("InfluxDB v1 at http://127.0.0.1:8086 unreachable: refused")
    other = SinkUnavailable("InfluxDB v1 at http://127.0.0.1:8086 answered HTTP 503: busy")
    with caplog.at_level(logging.INFO, logger="writer.app"):
        for exc in (down, down, down, down, other, other):  # two batches, each retrying
            writer._failing(100, exc, 0.5)
        now[0] += 27
        writer.influx.over()
    url = "http://127.0.0.1:8086"
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            f"InfluxDB at {url} not reachable since 2023-11-14T22:13:20Z: {down}; keeping 100 "
            "readings unacked; retrying",
        ),
        ("INFO", f"InfluxDB at {url} back after 27 s"),
    ]
