"""Fixtures of the fault tests: each test gets private instances of what it kills."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import unavailable
from tests.faults.harness import Influx, PrivatePostgres, PrivateRabbitMQ


@pytest.fixture
def rabbit(tmp_path: Path) -> Iterator[PrivateRabbitMQ]:
    reason = PrivateRabbitMQ.available()
    if reason:
        unavailable(reason)
    node = PrivateRabbitMQ(tmp_path / "rabbitmq")
    node.start()
    try:
        yield node
    finally:
        if node.proc is not None and node.proc.poll() is None:
            node.kill()


@pytest.fixture
def influx(tmp_path: Path) -> Iterator[Influx]:
    db = Influx(tmp_path / "influxdb")
    try:
        db.start()
    except (FileNotFoundError, RuntimeError) as exc:
        unavailable(f"no InfluxDB 1.x: {exc}")
    try:
        yield db
    finally:
        db.stop()


@pytest.fixture
def postgres() -> Iterator[PrivatePostgres]:
    reason = PrivatePostgres.available()
    if reason:
        unavailable(reason)
    server = PrivatePostgres()
    server.start()
    try:
        yield server
    finally:
        server.remove()
