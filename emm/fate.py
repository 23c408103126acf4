"""The fate of a consumed message: done, try again later, or never.

Every consumer settles through `decide`, its internal errors included:

    error                                          outcome
    None                                           ACK
    MessageError, SinkRejected                     DEAD_LETTER  the message can never succeed
    BrokerError, DatabaseError, DeviceError,       REQUEUE      transient, and not the message's
      SinkError (SinkUnavailable)                               fault: try again later
    any other Exception (ConfigError, DecodeError  DEAD_LETTER  nothing says a retry would help:
      escaping a consumer, or a bug of ours)                    never left unacked, never
                                                                redelivered forever
    BaseException (cancelled, interrupted)         REQUEUE      the process is stopping
"""

from __future__ import annotations

from enum import Enum

from emm.errors import (
    BrokerError,
    DatabaseError,
    DeviceError,
    EmmError,
    MessageError,
    SinkError,
    SinkRejected,
)

TRANSIENT: tuple[type[Exception], ...] = (BrokerError, DatabaseError, DeviceError, SinkError)


class Outcome(Enum):
    """What to do with a consumed message once it has been handled."""

    ACK = "ack"
    REQUEUE = "requeue"
    DEAD_LETTER = "dead-letter"


def decide(error: BaseException | None) -> Outcome:
    """The single rule for the fate of a message (the table in this module's docstring)."""
    if error is None:
        return Outcome.ACK
    if isinstance(error, MessageError | SinkRejected):
        return Outcome.DEAD_LETTER
    if isinstance(error, TRANSIENT) or not isinstance(error, Exception):
        return Outcome.REQUEUE
    return Outcome.DEAD_LETTER


def is_bug(error: BaseException | None) -> bool:
    """Whether `error` is none of the project's own: a fault in our code, worth a traceback."""
    return isinstance(error, Exception) and not isinstance(error, EmmError)


def reason(error: BaseException) -> str:
    """Why a message is dead-lettered, in one line."""
    return f"internal error: {error!r}" if is_bug(error) else str(error)
