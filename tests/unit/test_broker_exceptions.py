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

from broker.exceptions import ERRORS, LIBRARY_ERRORS, convert, map_exceptions
from emm.errors import BrokerError

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
