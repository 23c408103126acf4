"""emm.broker.decide: the one rule for ack, requeue or dead-letter."""

from __future__ import annotations

import pytest

from emm.broker import Outcome, decide
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
        (ConfigError("bad setting"), Outcome.REQUEUE),
        (DecodeError("short response"), Outcome.REQUEUE),
        (RuntimeError("bug"), Outcome.REQUEUE),
        (KeyError("x"), Outcome.REQUEUE),
        (TimeoutError(), Outcome.REQUEUE),
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
