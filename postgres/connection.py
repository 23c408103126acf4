"""Connections to PostgreSQL; psycopg2's errors become `DatabaseError` where they enter."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeAlias

import psycopg2
import psycopg2.extensions

from emm.errors import DatabaseError, EmmError

Connection: TypeAlias = psycopg2.extensions.connection

# The library's errors and ours, most specific first. psycopg2.Error is the root of every
# error psycopg2 raises, so nothing escapes unmapped.
_ERRORS: tuple[tuple[type[Exception], type[EmmError]], ...] = ((psycopg2.Error, DatabaseError),)


@contextmanager
def map_errors(context: str = "") -> Iterator[None]:
    """Raise a psycopg2 error from inside as the project's error, its first line after `context`."""
    try:
        yield
    except Exception as exc:
        for library, ours in _ERRORS:
            if isinstance(exc, library):
                raise ours(context + _first_line(exc)) from None
        raise


@contextmanager
def connect(dsn: str, *, timeout_s: float = 5.0) -> Iterator[Connection]:
    """Open a connection (closed on exit); failures become DatabaseError."""
    conn = open_connection(dsn, timeout_s=timeout_s)
    try:
        with map_errors():
            yield conn
    finally:
        conn.close()


def open_connection(dsn: str, *, timeout_s: float = 5.0) -> Connection:
    """A new connection for a caller that keeps it; failure becomes DatabaseError."""
    with map_errors("cannot connect to PostgreSQL: "):
        return psycopg2.connect(dsn, connect_timeout=max(1, int(timeout_s)))


def close_quietly(conn: Connection) -> None:
    """Close a connection that may already be broken."""
    try:
        conn.close()
    except psycopg2.Error:
        pass


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
