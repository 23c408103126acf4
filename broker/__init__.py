"""RabbitMQ: the one package that imports aio-pika and aiormq.

connection   Broker: one connection, reopened when lost; publish with confirms, consume and
             cancel, count consumers, settle every message as `emm.fate` decides
topology     the exchanges and queues (jobs sharded by gateway), their dead-lettering by
             RabbitMQ, migrating older queues
transport    the socket transport that coalesces frames
exceptions   the table turning library errors into BrokerError where they enter
"""

from broker.connection import Broker, Delivery, ack, nack
from broker.topology import (
    JOB_QUEUES,
    JOBS,
    MARKERS,
    QUEUES,
    READINGS,
    SHARDS,
    dead_letter_queue,
    job_queue,
    shard_of,
)

__all__ = [
    "JOBS",
    "JOB_QUEUES",
    "MARKERS",
    "QUEUES",
    "READINGS",
    "SHARDS",
    "Broker",
    "Delivery",
    "ack",
    "dead_letter_queue",
    "job_queue",
    "nack",
    "shard_of",
]
