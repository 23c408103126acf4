"""aio-pika and aiormq errors turned into the project's, where they enter.

`ERRORS` is the one table {library error: ours}; every call into aio-pika that can fail runs
inside `map_exceptions` (or catches `LIBRARY_ERRORS` to swallow what it may ignore), so nothing
above this package sees a library's exception type. The bases cover what aio-pika itself counts
as connection failures (`aio_pika.exceptions.CONNECTION_EXCEPTIONS`); a unit test fails when a
library release adds one the table does not map.
"""

from __future__ import annotations

from types import TracebackType

import aiormq.exceptions
import pamqp.exceptions

from emm.errors import BrokerError, EmmError

ERRORS: dict[type[BaseException], type[EmmError]] = {
    # closed connection or channel, refused or unconfirmed publish, protocol errors
    aiormq.exceptions.AMQPError: BrokerError,
    # a frame that cannot be marshalled or unmarshalled
    pamqp.exceptions.PAMQPException: BrokerError,
    # refused, reset or timed-out sockets, and no answer in time (TimeoutError is an OSError)
    OSError: BrokerError,
    # aio-pika: an operation on a channel or connection that is already closed
    RuntimeError: BrokerError,
    # aio-pika counts it among connection failures (an iterator over a closed channel)
    StopAsyncIteration: BrokerError,
}

LIBRARY_ERRORS: tuple[type[BaseException], ...] = tuple(ERRORS)


def convert(exc: BaseException, context: str) -> BaseException:
    """Our error for library error `exc` (as the table says), or `exc` itself if unmapped."""
    for library_error, ours in ERRORS.items():
        if isinstance(exc, library_error):
            return ours(f"{context}: {exc!r}")
    return exc


class map_exceptions:
    """`with map_exceptions("publish to emm.jobs"):` raises our error for a library error.

    Named like a function, as httpcore's; a class rather than a contextlib generator because it
    wraps every publish and costs less so.
    """

    __slots__ = ("context",)

    def __init__(self, context: str) -> None:
        self.context = context

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and isinstance(exc, LIBRARY_ERRORS):
            raise convert(exc, self.context) from exc
