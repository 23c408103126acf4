"""broker.exceptions: every aio-pika/aiormq connection error becomes BrokerError where it enters.

The list of library errors is taken from the installed libraries, so a release that adds one the
table does not map fails here.
"""

from __future__ import annotations

import inspect

import aio_pika.exceptions
import aiormq.exceptions
import pamqp.exceptions
import pytest
from pamqp.commands import Basic

from broker.exceptions import (
    ERRORS,
    LIBRARY_ERRORS,
    Endpoint,
    connect_error,
    convert,
    map_exceptions,
)
from emm.errors import BrokerError, Misconfigured

pytestmark = pytest.mark.timeout(30)

CONNECTION_EXCEPTIONS = tuple(aio_pika.exceptions.CONNECTION_EXCEPTIONS)


def library_errors() -> list[type[BaseException]]:
    """Every exception class aio-pika counts as a connection failure, and every exception class
    aio-pika, aiormq and pamqp define."""
    found: set[type[BaseException]] = set(CONNECTION_EXCEPTIONS)
    for module in (aio_pika.exceptions, aiormq.exceptions, pamqp.exceptions):
        for _name, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__.split(".")[0] in {
                "aio_pika",
                "aiormq",
                "pamqp",
            }:
                found.add(obj)
    return sorted(found, key=lambda cls: f"{cls.__module__}.{cls.__qualname__}")


def instance(cls: type[BaseException]) -> BaseException:
    """An instance of `cls` that can be shown, as the library would raise it."""
    for args in (("boom",), (None, Basic.Nack(delivery_tag=1)), ()):
        try:
            exc = cls(*args)
            repr(exc)
        except Exception:
            continue
        return exc
    # PublishError wants a whole returned message: made without its constructor
    exc = cls.__new__(cls)
    exc.message = None  # type: ignore[attr-defined]
    exc.frame = Basic.Return(reply_text="NO_ROUTE")  # type: ignore[attr-defined]
    repr(exc)
    return exc


def test_the_table_covers_what_aio_pika_counts_as_connection_failures() -> None:
    for cls in CONNECTION_EXCEPTIONS:
        assert issubclass(cls, tuple(ERRORS)), f"{cls.__qualname__} is not in broker's table"


@pytest.mark.parametrize("cls", library_errors(), ids=lambda cls: cls.__qualname__)
def test_every_library_error_is_mapped(cls: type[BaseException]) -> None:
    exc = instance(cls)
    assert isinstance(exc, LIBRARY_ERRORS), f"{cls.__qualname__} is not in broker's table"
    with (
        pytest.raises(BrokerError, match=r"^publish to emm\.jobs not confirmed: ") as raised,
        map_exceptions("publish to emm.jobs not confirmed"),
    ):
        raise exc
    assert raised.value.__cause__ is exc


def test_our_own_and_unexpected_errors_pass_unchanged() -> None:
    for exc in (ValueError("a bug"), BrokerError("ours already"), KeyError("k")):
        with pytest.raises(type(exc)) as raised, map_exceptions("context"):
            raise exc
        assert raised.value is exc
    assert isinstance(convert(TimeoutError(), "publish"), BrokerError)
    error = ValueError("x")
    assert convert(error, "publish") is error


ENDPOINT = Endpoint("127.0.0.1", 5672, "emm", "svc")
OPEN_REFUSED = aiormq.exceptions.InvalidFrameError(
    "Expected one of ['Connection.OpenOk'], got <Connection.Close object at 0x7f00>"
)


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("amqp://guest:secret@127.0.0.1:5672/%2F", ("127.0.0.1", 5672, "/", "guest")),
        ("amqp://u:p@mq/", ("mq", 5672, "/", "u")),
        ("amqp://mq", ("mq", 5672, "/", "guest")),
        ("amqps://u%40x:p@[::1]/a%2Fb", ("::1", 5671, "a/b", "u@x")),
    ],
)
def test_an_endpoint_names_host_port_vhost_and_user_never_the_password(
    url: str, endpoint: tuple[str, int, str, str]
) -> None:
    found = Endpoint.from_url(url)
    assert (found.host, found.port, found.vhost, found.user) == endpoint
    assert "secret" not in repr(found)


@pytest.mark.parametrize(
    ("exc", "kind", "message"),
    [
        (
            aiormq.exceptions.ProbableAuthenticationError("ACCESS_REFUSED - Login was refused"),
            Misconfigured,
            "RabbitMQ at 127.0.0.1:5672 refused the login (user 'svc', vhost 'emm'): check the "
            "user name and password in EMM_AMQP_URL",
        ),
        (
            OPEN_REFUSED,
            Misconfigured,
            "RabbitMQ at 127.0.0.1:5672 cannot open vhost 'emm' for user 'svc': the vhost does "
            "not exist or the user has no permission on it (rabbitmqctl list_vhosts; the path of "
            "EMM_AMQP_URL names the vhost, %2F for '/')",
        ),
        (
            aiormq.exceptions.AMQPConnectionError(111, "Connect call failed ('127.0.0.1', 1)"),
            BrokerError,
            "connection refused",
        ),
        (ConnectionResetError(104, "reset"), BrokerError, "connection reset by peer"),
        (TimeoutError(), BrokerError, "no answer in time"),
        (
            aiormq.exceptions.ConnectionClosed(320, "CONNECTION_FORCED - shutdown"),
            BrokerError,
            "CONNECTION_FORCED - shutdown",
        ),
    ],
)
def test_opening_a_connection_is_classified(
    exc: BaseException, kind: type[BaseException], message: str
) -> None:
    ours = connect_error(exc, ENDPOINT)
    assert type(ours) is kind
    assert str(ours) == message


def test_a_wrapped_system_error_gives_its_reason() -> None:
    try:
        try:
            raise ConnectionResetError(104, "Connection reset by peer")
        except ConnectionResetError as e:
            raise aiormq.exceptions.AMQPConnectionError(f"Server connection reset: {e!r}") from e
    except aiormq.exceptions.AMQPConnectionError as wrapped:
        assert str(connect_error(wrapped, ENDPOINT)) == "connection reset by peer"


def test_an_unmapped_error_is_left_alone() -> None:
    error = KeyError("ours")
    assert connect_error(error, ENDPOINT) is error
