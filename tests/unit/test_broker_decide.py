"""emm.fate.decide: the one rule for ack, requeue or dead-letter, for every consumer."""

from __future__ import annotations

import asyncio

import pytest

from emm.errors import (
    BrokerError,
    ConfigError,
    DatabaseError,
    DecodeError,
    MessageError,
    PermanentDeviceError,
    SinkError,
    SinkRejected,
    SinkUnavailable,
    TransientDeviceError,
)
from emm.fate import Outcome, decide, is_bug, reason

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (None, Outcome.ACK),
        # the message itself can never succeed
        (MessageError("job is not a JSON object", b"[]"), Outcome.DEAD_LETTER),
        (SinkRejected("400: bad line"), Outcome.DEAD_LETTER),
        # not the message's fault: try again later
        (SinkUnavailable("influxdb unreachable"), Outcome.REQUEUE),
        (SinkError("write failed"), Outcome.REQUEUE),
        (BrokerError("channel closed"), Outcome.REQUEUE),
        (DatabaseError("postgres down"), Outcome.REQUEUE),
        (TransientDeviceError("timeout"), Outcome.REQUEUE),
        (PermanentDeviceError("exception 2", exception_code=2), Outcome.REQUEUE),
        # nothing says a retry would help: never left unacked, never redelivered forever
        (ConfigError("bad setting"), Outcome.DEAD_LETTER),
        (DecodeError("short response"), Outcome.DEAD_LETTER),
        # an unexpected exception: a bug of ours
        (RuntimeError("bug"), Outcome.DEAD_LETTER),
        (KeyError("x"), Outcome.DEAD_LETTER),
        (AttributeError("x"), Outcome.DEAD_LETTER),
        (TimeoutError(), Outcome.DEAD_LETTER),
        # the process is stopping: RabbitMQ delivers it again
        (asyncio.CancelledError(), Outcome.REQUEUE),
        (KeyboardInterrupt(), Outcome.REQUEUE),
    ],
)
def test_decide(error: BaseException | None, outcome: Outcome) -> None:
    assert decide(error) is outcome


def test_subclasses_follow_their_parent() -> None:
    class Bad400(SinkRejected):
        pass

    class Flaky(SinkUnavailable):
        pass

    assert decide(Bad400("x")) is Outcome.DEAD_LETTER
    assert decide(Flaky("x")) is Outcome.REQUEUE


def test_outcome_values() -> None:
    assert [o.value for o in Outcome] == ["ack", "requeue", "dead-letter"]


@pytest.mark.parametrize(
    ("error", "bug", "why"),
    [
        (MessageError("job is not valid JSON", b"x"), False, "job is not valid JSON"),
        (SinkRejected("InfluxDB rejected the write (HTTP 400)"), False, "InfluxDB rejected"),
        (ValueError("oops"), True, "internal error: ValueError('oops')"),
    ],
)
def test_reason_names_a_bug_as_such(error: Exception, bug: bool, why: str) -> None:
    assert is_bug(error) is bug
    assert reason(error).startswith(why)
