"""RabbitMQ: the one package that imports aio-pika and aiormq.

connection   Broker: one connection, reopened when lost; publish with confirms, consume,
             settle every message as `emm.fate` decides
topology     the queues, their dead-lettering by RabbitMQ, migrating older queues
transport    the socket transport that coalesces frames
exceptions   the table turning library errors into BrokerError where they enter
"""

from broker.connection import Broker, Delivery
from broker.topology import JOBS, QUEUES, READINGS, dead_letter_queue

__all__ = ["JOBS", "QUEUES", "READINGS", "Broker", "Delivery", "dead_letter_queue"]
