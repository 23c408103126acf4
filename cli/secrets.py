"""`emm secrets DIR`: the docker compose stack's secrets, made on first start, kept after.

Each subfolder of DIR is one volume, mounted only in the containers it names, so that each
receives its own secrets and nothing else:

    postgres/        password (of the superuser `emm`), scheduler-password (its role, made
                     by deploy/postgres/init-roles.sh)
    migrate/         postgres-dsn (the superuser's: it changes the schema)
    scheduler/       postgres-dsn (role emm_scheduler, read only), amqp-url (user emm-scheduler)
    worker/          amqp-url (user emm-worker)
    writer/          amqp-url (user emm-writer)
    rabbitmq/        admin-password (user emm-admin, for people), definitions.json (the users as
                     salted hashes, their permissions and the topology: `broker.access`)
    influxdb/        admin-password (user emm-influx), admin-token
    grafana/         admin-password (user emm-grafana)
    writer-influx/   token: the writer's InfluxDB token (write and read the bucket), and
    grafana-influx/  token: Grafana's read-only one; both written by InfluxDB's own first-start
                     script (deploy/influxdb/init-tokens.sh), since InfluxDB makes the tokens

A secret already there is kept (a password is read back from the file that holds it), so a
second `up` changes nothing but definitions.json, written again for this version's topology.
Run as root (as compose does), each folder is handed to the user its container runs as.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import urllib.parse
from pathlib import Path

from broker.access import PERMISSIONS, definitions

SERVICE_USER = 10001  # the project image's `emm` user
# folder -> (uid, gid) of the process that reads it in its container
OWNERS = {
    "postgres": (70, 70),  # postgres:*-alpine
    "migrate": (SERVICE_USER, SERVICE_USER),
    "scheduler": (SERVICE_USER, SERVICE_USER),
    "worker": (SERVICE_USER, SERVICE_USER),
    "writer": (SERVICE_USER, SERVICE_USER),
    "rabbitmq": (999, 999),
    "influxdb": (1000, 1000),
    "grafana": (472, 0),
    "writer-influx": (1000, 1000),  # written by InfluxDB, read by the writer
    "grafana-influx": (1000, 1000),
}
SHARED = {"writer-influx", "grafana-influx"}  # read by a second user: files 0644 in a 0755 folder
POSTGRES = "postgres:5432/emm"
RABBITMQ = "rabbitmq:5672/%2F"
SCHEDULER_ROLE = "emm_scheduler"
RABBITMQ_ADMIN = "emm-admin"


def run(args: argparse.Namespace) -> int:
    """Make the missing secrets in `args.dir` and write the RabbitMQ definitions again."""
    made = generate(Path(args.dir))
    print(f"secrets made: {', '.join(made)}" if made else "secrets kept: nothing to make")
    return 0


def generate(root: Path) -> list[str]:
    """Make the secrets missing under `root`; returns the files made (definitions.json, always
    written again, not counted)."""
    made: list[str] = []

    def secret(folder: str, name: str) -> str:
        path = root / folder / name
        if path.exists():
            return path.read_text().strip()
        value = secrets.token_urlsafe(24)
        _write(root, folder, name, value)
        made.append(f"{folder}/{name}")
        return value

    def url(folder: str, name: str, user: str, where: str, scheme: str) -> None:
        path = root / folder / name
        if path.exists():
            return
        password = secrets.token_urlsafe(24)
        _write(root, folder, name, f"{scheme}://{user}:{password}@{where}")
        made.append(f"{folder}/{name}")

    for folder in OWNERS:
        _folder(root, folder)
    superuser = secret("postgres", "password")
    scheduler = secret("postgres", "scheduler-password")
    for folder, user, password in (
        ("migrate", "emm", superuser),
        ("scheduler", SCHEDULER_ROLE, scheduler),
    ):
        path = root / folder / "postgres-dsn"
        if not path.exists() or _password(path) != password:
            _write(root, folder, "postgres-dsn", f"postgresql://{user}:{password}@{POSTGRES}")
            made.append(f"{folder}/postgres-dsn")
    for service in PERMISSIONS:
        url(service, "amqp-url", f"emm-{service}", RABBITMQ, "amqp")
    admin = secret("rabbitmq", "admin-password")
    users = {s: (f"emm-{s}", _password(root / s / "amqp-url")) for s in PERMISSIONS}
    document = definitions("/", users, admin=(RABBITMQ_ADMIN, admin))
    _write(root, "rabbitmq", "definitions.json", json.dumps(document, indent=1))
    secret("influxdb", "admin-password")
    secret("influxdb", "admin-token")
    secret("grafana", "admin-password")
    return made


def _password(path: Path) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(path.read_text().strip()).password or "")


def _folder(root: Path, folder: str) -> None:
    path = root / folder
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755 if folder in SHARED else 0o700)
    if os.geteuid() == 0:
        os.chown(path, *OWNERS[folder])


def _write(root: Path, folder: str, name: str, value: str) -> None:
    """Write a secret readable by its folder's owner only (atomically: a half-written secret
    would be kept as it is on the next start)."""
    path = root / folder / name
    temporary = path.with_name(f".{name}.new")
    temporary.write_text(value)  # no newline: not every reader strips one
    temporary.chmod(0o400)
    if os.geteuid() == 0:
        os.chown(temporary, *OWNERS[folder])
    temporary.replace(path)
