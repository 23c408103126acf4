"""Fixtures of the fault tests: each test gets private instances of what it kills."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devservices.influx import PrivateInfluxDB
from devservices.postgres import PrivatePostgres
from devservices.rabbitmq import PrivateRabbitMQ
from tests.helpers import unavailable


@pytest.fixture
def rabbit(tmp_path: Path) -> Iterator[PrivateRabbitMQ]:
    """A private RabbitMQ node, killed afterwards (also after a failed start) if it runs."""
    reason = PrivateRabbitMQ.available()
    if reason:
        unavailable(reason)
    node = PrivateRabbitMQ(tmp_path / "rabbitmq")
    try:
        node.start()
        yield node
    finally:
        if node.running():
            node.kill()


@pytest.fixture
def influx(tmp_path: Path) -> Iterator[PrivateInfluxDB]:
    """A private InfluxDB 1.x with the database `energy`, stopped afterwards."""
    db = PrivateInfluxDB(tmp_path / "influxdb")
    try:
        try:
            db.start()
        except (FileNotFoundError, RuntimeError) as exc:
            unavailable(f"no InfluxDB 1.x: {exc}")
        yield db
    finally:
        db.stop()


@pytest.fixture
def postgres() -> Iterator[PrivatePostgres]:
    """A private PostgreSQL server, stopped and deleted afterwards."""
    reason = PrivatePostgres.available()
    if reason:
        unavailable(reason)
    server = PrivatePostgres()
    try:
        server.start()
        yield server
    finally:
        server.remove()
