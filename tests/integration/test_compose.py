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

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "deploy" / "docker-compose.yml"

EXPECTED_SERVICES = {
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
