"""Who may do what on RabbitMQ: one user per service, and the definitions that create them.

RabbitMQ grants a user three regular expressions per virtual host, matched against the names of
exchanges and queues: `configure` (declare, delete), `write` (publish to an exchange, bind a
queue) and `read` (consume or get from a queue). Declaring passively needs none. So:

    service    configure             write                      read
    scheduler  emm.scheduler.lease   emm.jobs                   nothing
    worker     nothing               emm.readings, emm.markers  emm.jobs.<k>
    writer     nothing               nothing                    emm.readings

A worker cannot publish a job (emm.jobs) nor consume readings; the writer cannot publish at
all; the scheduler cannot consume. Nobody may publish through the default exchange, which
reaches every queue by name. Dead-lettering is RabbitMQ's own move and needs no permission.

No service may declare (but for the scheduler its lease, `broker.lease`: an exclusive queue
only its own connection can use), so the topology comes with the users: `definitions` builds
one RabbitMQ definitions document holding the virtual host, the users (passwords only as RabbitMQ's
salted SHA-256 hashes), their permissions and every exchange, queue and binding of
`broker.topology`, with the same arguments the services check. RabbitMQ loads it at boot
(`load_definitions`) or on `rabbitmqctl import_definitions FILE`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from broker.lease import SCHEDULER_LEASE
from broker.topology import (
    DEAD_LETTER_EXCHANGE,
    DEAD_QUEUES,
    EXCHANGE_BINDINGS,
    EXCHANGES,
    JOBS,
    MARKERS,
    QUEUES,
    READINGS,
    dead_letter_binding,
    dead_letter_queue,
    dead_queue_arguments,
    queue_bindings,
    work_queue_arguments,
)

NOTHING = "^$"  # RabbitMQ's way to grant nothing: no name is empty


def _only(*names: str) -> str:
    return "^(" + "|".join(re.escape(name) for name in names) + ")$"


@dataclass(frozen=True)
class Permission:
    """A user's rights on a virtual host: regular expressions over exchange and queue names."""

    configure: str
    write: str
    read: str


# service -> its rights
PERMISSIONS: dict[str, Permission] = {
    # the lease is an exclusive queue it declares: configure on that one name, nothing else
    "scheduler": Permission(configure=_only(SCHEDULER_LEASE), write=_only(JOBS), read=NOTHING),
    "worker": Permission(
        configure=NOTHING, write=_only(READINGS, MARKERS), read=rf"^{re.escape(JOBS)}\.[0-9]+$"
    ),
    "writer": Permission(configure=NOTHING, write=NOTHING, read=_only(READINGS)),
}
ADMIN = Permission(configure=".*", write=".*", read=".*")


def password_hash(password: str, salt: bytes | None = None) -> str:
    """`password` as RabbitMQ stores it (`rabbit_password_hashing_sha256`): base64 of a 4-byte
    salt followed by SHA-256 of the salt and the password."""
    salt = os.urandom(4) if salt is None else salt
    digest = hashlib.sha256(salt + password.encode()).digest()
    return base64.b64encode(salt + digest).decode()


def definitions(
    vhost: str, users: Mapping[str, tuple[str, str]], admin: tuple[str, str] | None = None
) -> dict[str, Any]:
    """The definitions of `vhost`: for each service in `users` (service -> (user name,
    password)) a user with the service's permissions, an administrator if `admin` is given,
    and the whole topology."""
    accounts = [
        (name, password, "", PERMISSIONS[service]) for service, (name, password) in users.items()
    ]
    if admin is not None:
        accounts.append((admin[0], admin[1], "administrator", ADMIN))
    return {
        "users": [
            {
                "name": name,
                "password_hash": password_hash(password),
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": tags,
            }
            for name, password, tags, _ in accounts
        ],
        "vhosts": [{"name": vhost}],
        "permissions": [
            {
                "user": name,
                "vhost": vhost,
                "configure": rights.configure,
                "write": rights.write,
                "read": rights.read,
            }
            for name, _, _, rights in accounts
        ],
        **topology(vhost),
    }


def topology(vhost: str) -> dict[str, list[dict[str, Any]]]:
    """`broker.topology`'s exchanges, queues and bindings as RabbitMQ definitions."""
    exchanges = [
        {
            "name": name,
            "vhost": vhost,
            "type": kind,
            "durable": True,
            "auto_delete": False,
            "internal": False,
            "arguments": {},
        }
        for name, kind in EXCHANGES.items()
    ]
    queues = [_queue(vhost, dead, dead_queue_arguments()) for dead in DEAD_QUEUES]
    queues += [_queue(vhost, queue, work_queue_arguments(queue)) for queue in QUEUES]
    bindings = [
        _binding(
            vhost, DEAD_LETTER_EXCHANGE, dead_letter_queue(queue), "", dead_letter_binding(queue)
        )
        for queue in QUEUES
    ]
    bindings += [
        _binding(vhost, exchange, queue, routing_key, {})
        for queue in QUEUES
        for exchange, routing_key in queue_bindings(queue)
    ]
    bindings += [
        _binding(vhost, source, destination, "", {}, kind="exchange")
        for source, destination in EXCHANGE_BINDINGS
    ]
    return {"exchanges": exchanges, "queues": queues, "bindings": bindings}


def _queue(vhost: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "vhost": vhost,
        "durable": True,
        "auto_delete": False,
        "arguments": arguments,
    }


def _binding(
    vhost: str,
    exchange: str,
    destination: str,
    routing_key: str,
    arguments: dict[str, Any],
    kind: str = "queue",
) -> dict[str, Any]:
    return {
        "source": exchange,
        "vhost": vhost,
        "destination": destination,
        "destination_type": kind,
        "routing_key": routing_key,
        "arguments": arguments,
    }
