"""Connections to PostgreSQL; psycopg2's errors become the project's where they enter.

A missing table means a database without the schema (`emm migrate` makes it), and libpq's
refusals of a login or a database name cannot mend themselves either: those are Misconfigured,
naming the database, host, port and user (never the password). Anything else is a
DatabaseError, which callers treat as an outage.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeAlias

import psycopg2
import psycopg2.errors
import psycopg2.extensions

from emm.errors import DatabaseError, EmmError, Misconfigured

Connection: TypeAlias = psycopg2.extensions.connection

# libpq reports a refused login or an unknown database as a bare OperationalError, without a
# SQLSTATE: its text is all there is to tell them from an outage.
_REFUSED = re.compile(
    r"(password authentication failed|database \S+ does not exist|role \S+ does not exist|"
    r"no pg_hba\.conf entry)"
)


def describe(dsn: str) -> str:
    """`database 'emm' at 127.0.0.1:5432 as user 'emm'`: a DSN without its password."""
    try:
        parts = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.Error:
        return "the database of EMM_POSTGRES_DSN"
    host = parts.get("host", "localhost")
    user = parts.get("user", "(default)")
    return (
        f"database {parts.get('dbname', user)!r} at {host}:{parts.get('port', 5432)} "
        f"as user {user!r}"
    )


def _convert(exc: psycopg2.Error, context: str, where: str) -> EmmError:
    """Ours for `exc`: psycopg2.Error is the root of every error psycopg2 raises, so nothing
    escapes unmapped."""
    first = _first_line(exc)
    if isinstance(exc, psycopg2.errors.UndefinedTable):
        return Misconfigured(f"PostgreSQL {where} has no schema ({first}): run `emm migrate`")
    if isinstance(exc, psycopg2.OperationalError) and _REFUSED.search(str(exc)):
        message = str(exc).split("FATAL:", 1)[-1].strip().splitlines()[0]
        return Misconfigured(f"PostgreSQL refused {where}: {message} (EMM_POSTGRES_DSN)")
    return DatabaseError(context + first)


@contextmanager
def map_errors(context: str = "", conn: Connection | None = None) -> Iterator[None]:
    """Raise a psycopg2 error from inside as the project's error, its first line after
    `context`; `conn`, when given, names the database in Misconfigured's message."""
    try:
        yield
    except psycopg2.Error as exc:
        where = describe(conn.dsn) if conn is not None else "database"
        raise _convert(exc, context, where) from None


@contextmanager
def connect(dsn: str, *, timeout_s: float = 5.0) -> Iterator[Connection]:
    """Open a connection (closed on exit); failures become DatabaseError or Misconfigured."""
    conn = open_connection(dsn, timeout_s=timeout_s)
    try:
        with map_errors(conn=conn):
            yield conn
    finally:
        conn.close()


def open_connection(dsn: str, *, timeout_s: float = 5.0) -> Connection:
    """A new connection for a caller that keeps it; failure becomes DatabaseError (unreachable)
    or Misconfigured (login or database refused)."""
    try:
        return psycopg2.connect(dsn, connect_timeout=max(1, int(timeout_s)))
    except psycopg2.Error as exc:
        raise _convert(exc, "cannot connect to PostgreSQL: ", describe(dsn)) from None


def close_quietly(conn: Connection) -> None:
    """Close a connection that may already be broken."""
    try:
        conn.close()
    except psycopg2.Error:
        pass


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
