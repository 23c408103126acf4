"""aio-pika and aiormq errors turned into the project's, where they enter.

`ERRORS` is the one table {library error: ours}; every call into aio-pika that can fail runs
inside `map_exceptions` (or catches `LIBRARY_ERRORS` to swallow what it may ignore), so nothing
above this package sees a library's exception type. The bases cover what aio-pika itself counts
as connection failures (`aio_pika.exceptions.CONNECTION_EXCEPTIONS`); a unit test fails when a
library release adds one the table does not map.

Opening a connection is classified further by `connect_error`: a refused login or a vhost the
user cannot open is `Misconfigured` (waiting will not mend it), anything else a `BrokerError`
whose message is the operating system's reason alone ("connection refused"), for the outage
lines.
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from types import TracebackType

import aiormq.exceptions
import pamqp.exceptions

from emm.errors import BrokerError, EmmError, Misconfigured

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


@dataclass(frozen=True)
class Endpoint:
    """Where an AMQP URL points, without its password: for messages."""

    host: str
    port: int
    vhost: str
    user: str

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        parts = urllib.parse.urlsplit(url)
        default_port = 5671 if parts.scheme.lower() == "amqps" else 5672
        # RabbitMQ's rule: an empty path is the vhost "/", otherwise the path without its slash
        vhost = urllib.parse.unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        return cls(
            parts.hostname or "localhost",
            parts.port or default_port,
            vhost,
            urllib.parse.unquote(parts.username or "guest"),
        )

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"RabbitMQ at {host}:{self.port}"


def reason(exc: BaseException) -> str:
    """The operating system's or the broker's reason for `exc`, in a few words."""
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    # the broker's own close (an OSError too, its errno an AMQP reply code)
    if isinstance(exc, aiormq.exceptions.ConnectionClosed) and len(exc.args) == 2:
        return str(exc.args[1])  # (reply code, reply text)
    # the operating system's error, or the one aiormq wrapped ("Server connection reset: ...")
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        if isinstance(seen, OSError) and isinstance(seen.errno, int):
            return os.strerror(seen.errno).lower()
        seen = seen.__cause__ or seen.__context__
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _opened_refused(exc: BaseException) -> bool:
    """Whether RabbitMQ closed the connection instead of opening its vhost. aiormq raises no
    type of its own for this (its handshake reads the Connection.Close frame as an unexpected
    one), so the frame's name in the message is all there is."""
    if isinstance(exc, aiormq.exceptions.ConnectionNotAllowed):
        return True
    return isinstance(exc, aiormq.exceptions.InvalidFrameError) and (
        "Connection.OpenOk" in str(exc) and "Connection.Close" in str(exc)
    )


def connect_error(exc: BaseException, endpoint: Endpoint) -> BaseException:
    """Our error for `exc`, raised while opening a connection to `endpoint` and its channel:
    Misconfigured for what waiting will not mend, a BrokerError with the reason alone for the
    rest (an unmapped error is returned as it is)."""
    who = f"user {endpoint.user!r}, vhost {endpoint.vhost!r}"
    if isinstance(
        exc, aiormq.exceptions.ProbableAuthenticationError | aiormq.exceptions.AuthenticationError
    ):
        return Misconfigured(
            f"{endpoint} refused the login ({who}): check the user name and password in "
            "EMM_AMQP_URL"
        )
    if _opened_refused(exc):
        return Misconfigured(
            f"{endpoint} cannot open vhost {endpoint.vhost!r} for user {endpoint.user!r}: the "
            "vhost does not exist or the user has no permission on it (rabbitmqctl list_vhosts; "
            "the path of EMM_AMQP_URL names the vhost, %2F for '/')"
        )
    if isinstance(exc, aiormq.exceptions.ChannelAccessRefused):
        return Misconfigured(f"{endpoint} refused {who} a permission it needs: {reason(exc)}")
    if isinstance(exc, LIBRARY_ERRORS):
        return BrokerError(reason(exc))
    return exc
