"""broker.access: what each service's RabbitMQ user may touch, and the definitions document."""

from __future__ import annotations

import re

import pytest

from broker.access import PERMISSIONS, definitions, password_hash
from broker.topology import (
    DEAD_QUEUES,
    EXCHANGES,
    JOB_QUEUES,
    QUEUES,
    dead_queue_arguments,
    work_queue_arguments,
)

pytestmark = pytest.mark.timeout(10)

EVERY_EXCHANGE = [*EXCHANGES, "amq.default", "amq.topic"]
EVERY_QUEUE = [*QUEUES, *DEAD_QUEUES, "emm.jobs"]


def _allowed(pattern: str, names: list[str]) -> set[str]:
    """The names a permission reaches (RabbitMQ searches: the anchors are ours)."""
    return {name for name in names if re.search(pattern, name)}


def test_password_hash_is_rabbitmqs() -> None:
    # the example of RabbitMQ's documentation ("Computing a password hash")
    assert (
        password_hash("test12", bytes.fromhex("908DC60A"))
        == "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR"
    )


@pytest.mark.parametrize(
    ("service", "writes", "reads"),
    [
        ("scheduler", {"emm.jobs"}, set()),
        ("worker", {"emm.readings", "emm.markers"}, set(JOB_QUEUES)),
        ("writer", set(), {"emm.readings"}),
    ],
)
def test_each_service_reaches_only_its_exchanges_and_queues(
    service: str, writes: set[str], reads: set[str]
) -> None:
    rights = PERMISSIONS[service]
    names = EVERY_EXCHANGE + EVERY_QUEUE
    assert _allowed(rights.configure, names) == set()
    assert _allowed(rights.write, EVERY_EXCHANGE) == writes
    assert _allowed(rights.read, EVERY_QUEUE) == reads


def test_definitions_hold_the_topology_the_services_declare() -> None:
    document = definitions("v", {"worker": ("w", "pw")}, admin=("a", "apw"))
    assert [u["name"] for u in document["users"]] == ["w", "a"]
    assert document["vhosts"] == [{"name": "v"}]
    queues = {q["name"]: q["arguments"] for q in document["queues"]}
    assert queues == {
        **{q: work_queue_arguments(q) for q in QUEUES},
        **dict.fromkeys(DEAD_QUEUES, dead_queue_arguments()),
    }
    assert {e["name"]: e["type"] for e in document["exchanges"]} == EXCHANGES
    bindings = {
        (b["source"], b["destination"], b["destination_type"], b["routing_key"])
        for b in document["bindings"]
        if b["source"] != "emm.dead"
    }
    assert bindings == {
        *{("emm.jobs", q, "queue", q) for q in JOB_QUEUES},
        ("emm.readings", "emm.readings", "queue", "emm.readings"),
        ("emm.markers", "emm.jobs", "exchange", ""),
    }
    dead = [b for b in document["bindings"] if b["source"] == "emm.dead"]
    assert len(dead) == len(QUEUES)


def test_the_scheduler_may_declare_its_lease_and_nothing_else() -> None:
    names = [*EVERY_EXCHANGE, *EVERY_QUEUE, "emm.scheduler.lease", "emm.scheduler.lease2"]
    assert _allowed(PERMISSIONS["scheduler"].configure, names) == {"emm.scheduler.lease"}
    assert _allowed(PERMISSIONS["worker"].configure, names) == set()
