"""`emm secrets`: the compose stack's secrets, made once, kept, each in its consumer's folder."""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.parse
from pathlib import Path

import pytest

from broker.access import PERMISSIONS
from cli.secrets import OWNERS, generate

pytestmark = pytest.mark.timeout(30)


def _read(root: Path, name: str) -> str:
    return (root / name).read_text().strip()


def _files(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): path.read_text()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _matches(hashed: str, password: str) -> bool:
    raw = base64.b64decode(hashed)
    return hashlib.sha256(raw[:4] + password.encode()).digest() == raw[4:]


def test_first_start_makes_every_secret_in_its_consumers_folder(tmp_path: Path) -> None:
    made = generate(tmp_path)
    assert made == [
        "postgres/password",
        "postgres/scheduler-password",
        "migrate/postgres-dsn",
        "scheduler/postgres-dsn",
        "scheduler/amqp-url",
        "worker/amqp-url",
        "writer/amqp-url",
        "rabbitmq/admin-password",
        "influxdb/admin-password",
        "influxdb/admin-token",
        "grafana/admin-password",
    ]
    assert {p.name for p in tmp_path.iterdir()} == set(OWNERS)
    superuser, scheduler = (
        _read(tmp_path, "postgres/password"),
        _read(tmp_path, "postgres/scheduler-password"),
    )
    assert (
        _read(tmp_path, "migrate/postgres-dsn") == f"postgresql://emm:{superuser}@postgres:5432/emm"
    )
    assert _read(tmp_path, "scheduler/postgres-dsn") == (
        f"postgresql://emm_scheduler:{scheduler}@postgres:5432/emm"
    )
    passwords = [superuser, scheduler]
    for service in PERMISSIONS:
        url = urllib.parse.urlsplit(_read(tmp_path, f"{service}/amqp-url"))
        assert (url.scheme, url.username, url.hostname, url.port, url.path) == (
            "amqp",
            f"emm-{service}",
            "rabbitmq",
            5672,
            "/%2F",
        )
        assert url.password
        passwords.append(url.password)
    passwords += [
        _read(tmp_path, name)
        for name in (
            "rabbitmq/admin-password",
            "influxdb/admin-password",
            "influxdb/admin-token",
            "grafana/admin-password",
        )
    ]
    assert len(set(passwords)) == len(passwords)  # all different
    assert all(len(p) == 32 for p in passwords)  # 24 random bytes each
    # only their own folder: no worker file holds a PostgreSQL or InfluxDB secret
    assert {p.name for p in (tmp_path / "worker").iterdir()} == {"amqp-url"}
    assert {p.name for p in (tmp_path / "writer").iterdir()} == {"amqp-url"}
    assert [list((tmp_path / f).iterdir()) for f in ("writer-influx", "grafana-influx")] == [[], []]
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert path.stat().st_mode & 0o777 == 0o400, path


def test_rabbitmq_definitions_hold_hashes_of_the_services_passwords(tmp_path: Path) -> None:
    generate(tmp_path)
    document = json.loads(_read(tmp_path, "rabbitmq/definitions.json"))
    users = {user["name"]: user for user in document["users"]}
    assert set(users) == {"emm-scheduler", "emm-worker", "emm-writer", "emm-admin"}
    for service in PERMISSIONS:
        password = urllib.parse.urlsplit(_read(tmp_path, f"{service}/amqp-url")).password
        assert password is not None
        assert _matches(users[f"emm-{service}"]["password_hash"], password)
        assert users[f"emm-{service}"]["tags"] == ""
    assert _matches(users["emm-admin"]["password_hash"], _read(tmp_path, "rabbitmq/admin-password"))
    assert users["emm-admin"]["tags"] == "administrator"
    text = _read(tmp_path, "rabbitmq/definitions.json")
    assert _read(tmp_path, "rabbitmq/admin-password") not in text  # hashes only
    rights = {p["user"]: (p["configure"], p["write"], p["read"]) for p in document["permissions"]}
    assert rights == {
        "emm-scheduler": (r"^(emm\.scheduler\.lease)$", r"^(emm\.jobs)$", "^$"),
        "emm-worker": ("^$", r"^(emm\.readings|emm\.markers)$", r"^emm\.jobs\.[0-9]+$"),
        "emm-writer": ("^$", "^$", r"^(emm\.readings)$"),
        "emm-admin": (".*", ".*", ".*"),
    }


def test_a_second_start_keeps_every_secret(tmp_path: Path) -> None:
    generate(tmp_path)
    before = _files(tmp_path)
    assert generate(tmp_path) == []
    after = _files(tmp_path)
    # the same secrets; only the definitions are written again (new salts, same passwords)
    assert {k: v for k, v in after.items() if not k.endswith(".json")} == {
        k: v for k, v in before.items() if not k.endswith(".json")
    }
    assert after.keys() == before.keys()


def test_a_lost_dsn_is_made_again_from_the_kept_password(tmp_path: Path) -> None:
    generate(tmp_path)
    dsn = _read(tmp_path, "scheduler/postgres-dsn")
    (tmp_path / "scheduler/postgres-dsn").unlink()
    assert generate(tmp_path) == ["scheduler/postgres-dsn"]
    assert _read(tmp_path, "scheduler/postgres-dsn") == dsn
