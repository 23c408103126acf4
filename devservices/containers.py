"""The same servers from a Docker engine, when one answers (testcontainers, a test extra)."""

from __future__ import annotations

import contextlib
import gc
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

from devservices.net import wait_http

_docker_state: dict[str, bool] = {}


def docker_answers() -> bool:
    """Whether a Docker engine answers (checked once)."""
    if "ok" not in _docker_state:
        ok = False
        if not (os.environ.get("DOCKER_HOST") or Path("/var/run/docker.sock").exists()):
            _docker_state["ok"] = False
            return False
        with contextlib.suppress(Exception), warnings.catch_warnings():
            # A failed ping leaves the client's socket to the garbage collector.
            warnings.simplefilter("ignore", ResourceWarning)
            import docker

            client = docker.from_env(timeout=3)
            try:
                ok = bool(client.ping())
            finally:
                client.close()
                gc.collect()
        _docker_state["ok"] = ok
    return _docker_state["ok"]


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A PostgreSQL container's DSN."""
    from testcontainers.postgres import PostgresContainer

    with PostgresContainer("postgres:15-alpine", driver=None) as pg:
        yield pg.get_connection_url()


@contextlib.contextmanager
def rabbitmq() -> Iterator[str]:
    """A RabbitMQ container's AMQP URL (vhost `/`)."""
    from testcontainers.rabbitmq import RabbitMqContainer

    with RabbitMqContainer("rabbitmq:3.13") as rmq:
        params = rmq.get_connection_params()
        yield f"amqp://guest:guest@{params.host}:{params.port}/%2F"


@contextlib.contextmanager
def influxdb_v1() -> Iterator[str]:
    """An InfluxDB 1.x container's URL."""
    from testcontainers.core.container import DockerContainer

    with DockerContainer("influxdb:1.8").with_exposed_ports(8086) as c:
        url = f"http://{c.get_container_host_ip()}:{c.get_exposed_port(8086)}"
        wait_http(f"{url}/ping")
        yield url


@contextlib.contextmanager
def victoriametrics() -> Iterator[str]:
    """A VictoriaMetrics container's URL."""
    from testcontainers.core.container import DockerContainer

    with (
        DockerContainer("victoriametrics/victoria-metrics:v1.106.1")
        .with_command("-dedup.minScrapeInterval=1ms -search.latencyOffset=0s")
        .with_exposed_ports(8428) as c
    ):
        url = f"http://{c.get_container_host_ip()}:{c.get_exposed_port(8428)}"
        wait_http(f"{url}/health")
        yield url
