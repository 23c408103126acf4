"""Static checks of the docker compose stack in deploy/docker-compose.yml.

Only `docker-compose config` is run, which validates the file offline: no
Docker engine, network access or image is needed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "deploy" / "docker-compose.yml"

EXPECTED_SERVICES = {
    "secrets",
    "postgres",
    "rabbitmq",
    "influxdb",
    "grafana",
    "migrate",
    "simulator",
    "scheduler",
    "worker",
    "writer",
}

pytestmark = pytest.mark.integration


def _docker_compose() -> str:
    """Path of the docker-compose binary; skip locally, fail in CI if absent."""
    binary = shutil.which("docker-compose")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose not installed, but it is required in CI")
        pytest.skip("docker-compose not installed")
    return binary


def _run_config(*extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_docker_compose(), "-f", str(COMPOSE_FILE), "config", *extra],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=45,
        check=False,
    )


def _service_block(config_text: str, service: str) -> str:
    """Text of one service in the rendered `config` output.

    The rendered file is normalised: two-space indentation, services as
    direct children of the top-level `services:` key.
    """
    block: list[str] = []
    in_services = False
    inside = False
    for line in config_text.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        if indent == 0:
            in_services = line.rstrip() == "services:"
            inside = False
            continue
        if in_services and indent == 2:
            inside = line.strip() == f"{service}:"
            continue
        if inside:
            block.append(line)
    return "\n".join(block)


@pytest.mark.timeout(60)
def test_compose_config_is_valid() -> None:
    assert COMPOSE_FILE.is_file(), f"missing {COMPOSE_FILE.relative_to(REPO_ROOT)}"

    result = _run_config()
    assert result.returncode == 0, (
        f"docker-compose config failed ({result.returncode}):\n{result.stderr}"
    )
    config_text = result.stdout

    services = _run_config("--services")
    assert services.returncode == 0, services.stderr
    assert set(services.stdout.split()) == EXPECTED_SERVICES

    worker = _service_block(config_text, "worker")
    assert worker, "worker service not found in rendered config"
    # `--scale worker=N` needs unnamed containers without fixed host ports.
    assert "container_name" not in worker
    assert "ports:" not in worker
    assert "emm" in worker and "worker" in worker


@pytest.mark.timeout(60)
def test_every_service_has_a_progress_healthcheck() -> None:
    result = _run_config()
    assert result.returncode == 0, result.stderr
    for service in ("scheduler", "worker", "writer", "simulator"):
        lines = [line.strip() for line in _service_block(result.stdout, service).splitlines()]
        assert "healthcheck:" in lines, service
        test = lines.index("test:", lines.index("healthcheck:"))
        assert lines[test + 1 : test + 5] == ["- CMD", "- emm", "- health", f"- {service}"]
    grafana = _service_block(result.stdout, "grafana")
    assert "healthcheck:" in grafana and "http://127.0.0.1:3000/api/health" in grafana


# service -> the secret volumes it mounts: its own, and nothing else
SECRET_VOLUMES = {
    "secrets": {
        "secrets-postgres",
        "secrets-migrate",
        "secrets-scheduler",
        "secrets-worker",
        "secrets-writer",
        "secrets-rabbitmq",
        "secrets-influxdb",
        "secrets-grafana",
        "secrets-writer-influx",
        "secrets-grafana-influx",
    },
    "postgres": {"secrets-postgres"},
    "rabbitmq": {"secrets-rabbitmq"},
    "influxdb": {"secrets-influxdb", "secrets-writer-influx", "secrets-grafana-influx"},
    "grafana": {"secrets-grafana", "secrets-grafana-influx"},
    "migrate": {"secrets-migrate"},
    "simulator": set(),
    "scheduler": {"secrets-scheduler"},
    "worker": {"secrets-worker"},
    "writer": {"secrets-writer", "secrets-writer-influx"},
}
# variables whose value would be a secret: only their _FILE forms may be set
SECRET_VARIABLES = {
    "EMM_POSTGRES_DSN",
    "EMM_AMQP_URL",
    "EMM_INFLUX_TOKEN",
    "POSTGRES_PASSWORD",
    "RABBITMQ_DEFAULT_PASS",
    "DOCKER_INFLUXDB_INIT_PASSWORD",
    "DOCKER_INFLUXDB_INIT_ADMIN_TOKEN",
    "GF_SECURITY_ADMIN_PASSWORD",
}


def _config(**env: str) -> dict:
    result = subprocess.run(
        [_docker_compose(), "-f", str(COMPOSE_FILE), "config"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=45,
        check=False,
        env={**os.environ, **env},
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.mark.timeout(60)
def test_each_container_gets_its_own_secrets_from_files_only() -> None:
    services = _config()["services"]
    for name, service in services.items():
        mounted = {v.split(":")[0] for v in service.get("volumes", [])}
        assert {v for v in mounted if v.startswith("secrets-")} == SECRET_VOLUMES[name], name
        environment = service.get("environment", {})
        assert not SECRET_VARIABLES & set(environment), name
    files = {
        name: {k: v for k, v in s.get("environment", {}).items() if k.endswith("_FILE")}
        for name, s in services.items()
    }
    assert files == {
        "secrets": {},
        "postgres": {"POSTGRES_PASSWORD_FILE": "/run/secrets/emm/password"},
        "rabbitmq": {},  # its users come as hashes in the definitions it loads
        "influxdb": {
            "DOCKER_INFLUXDB_INIT_PASSWORD_FILE": "/run/secrets/emm/admin-password",
            "DOCKER_INFLUXDB_INIT_ADMIN_TOKEN_FILE": "/run/secrets/emm/admin-token",
        },
        "grafana": {"GF_SECURITY_ADMIN_PASSWORD__FILE": "/run/secrets/emm/admin-password"},
        "migrate": {"EMM_POSTGRES_DSN_FILE": "/run/secrets/emm/postgres-dsn"},
        "simulator": {},
        "scheduler": {
            "EMM_POSTGRES_DSN_FILE": "/run/secrets/emm/postgres-dsn",
            "EMM_AMQP_URL_FILE": "/run/secrets/emm/amqp-url",
        },
        "worker": {"EMM_AMQP_URL_FILE": "/run/secrets/emm/amqp-url"},
        "writer": {
            "EMM_AMQP_URL_FILE": "/run/secrets/emm/amqp-url",
            "EMM_INFLUX_TOKEN_FILE": "/run/secrets/emm-influx/token",
        },
    }
    # the secrets are made before anything that reads them starts
    for name in ("postgres", "rabbitmq", "influxdb", "simulator"):
        assert services[name]["depends_on"]["secrets"] == {
            "condition": "service_completed_successfully"
        }
    assert services["secrets"]["command"] == ["emm", "secrets", "/run/secrets/emm"]
    assert services["migrate"]["command"] == ["emm", "migrate", "--grant-read", "emm_scheduler"]


def test_dev_env_holds_no_secret() -> None:
    lines = (REPO_ROOT / ".dev.env").read_text().splitlines()
    settings = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    assert not SECRET_VARIABLES & set(settings)
    for key, value in settings.items():
        assert not any(word in key for word in ("PASS", "TOKEN", "SECRET", "KEY")), key
        assert "@" not in value, key  # no user:password@host URL


@pytest.mark.timeout(60)
def test_published_ports_bind_to_loopback_unless_opened() -> None:
    published = {
        name: service["ports"]
        for name, service in _config()["services"].items()
        if service.get("ports")
    }
    assert published == {
        "rabbitmq": ["127.0.0.1:5672:5672/tcp", "127.0.0.1:15672:15672/tcp"],
        "influxdb": ["127.0.0.1:8086:8086/tcp"],
        "grafana": ["127.0.0.1:3000:3000/tcp"],
    }
    opened = _config(EMM_PUBLISH_ADDRESS="0.0.0.0")["services"]
    assert opened["grafana"]["ports"] == ["0.0.0.0:3000:3000/tcp"]
    assert opened["rabbitmq"]["ports"] == ["0.0.0.0:5672:5672/tcp", "0.0.0.0:15672:15672/tcp"]
