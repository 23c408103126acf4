"""The containers' first-start scripts in deploy/, run here against stand-ins of their tools."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOKENS = ROOT / "deploy" / "influxdb" / "init-tokens.sh"

pytestmark = pytest.mark.timeout(30)

# Prints what `influx auth create --json` prints (tab-indented), its arguments logged.
FAKE_INFLUX = """#!/bin/sh
echo "$@" >> "$INFLUX_CALLS"
case "$*" in *--write-bucket*) token=writer-token== ;; *) token=grafana-token== ;; esac
printf '{\\n\\t"id": "0a1b",\\n\\t"description": "x",\\n'
printf '\\t"token": "%s",\\n\\t"status": "active"\\n}\\n' "$token"
"""


def _run(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    influx = bin_dir / "influx"
    influx.write_text(FAKE_INFLUX)
    influx.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "INFLUX_CALLS": str(tmp_path / "calls"),
        "EMM_SECRETS_ROOT": str(tmp_path / "secrets"),
        "DOCKER_INFLUXDB_INIT_ADMIN_TOKEN": "admin-token",
        "DOCKER_INFLUXDB_INIT_BUCKET_ID": "b0c1",
        "DOCKER_INFLUXDB_INIT_ORG": "emm",
    }
    bash = shutil.which("bash")
    assert bash is not None
    return subprocess.run([bash, str(TOKENS)], env=env, capture_output=True, text=True, timeout=20)


def test_influxdb_hands_the_writer_a_bucket_token_and_grafana_a_read_token(tmp_path: Path) -> None:
    for folder in ("emm-writer", "emm-grafana"):
        (tmp_path / "secrets" / folder).mkdir(parents=True)
    done = _run(tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "secrets/emm-writer/token").read_text() == "writer-token=="
    assert (tmp_path / "secrets/emm-grafana/token").read_text() == "grafana-token=="
    assert (tmp_path / "secrets/emm-writer/token").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "calls").read_text().splitlines() == [
        "auth create --org emm --token admin-token --description emm-writer "
        "--write-bucket b0c1 --read-bucket b0c1 --json",
        "auth create --org emm --token admin-token --description emm-grafana "
        "--read-bucket b0c1 --json",
    ]
    # run again (a restart during setup): the tokens are kept, none is made twice
    again = _run(tmp_path)
    assert again.returncode == 0, again.stderr
    assert len((tmp_path / "calls").read_text().splitlines()) == 2
    assert (tmp_path / "secrets/emm-writer/token").read_text() == "writer-token=="
