"""postgres.connection.map_errors: every error psycopg2 raises becomes a DatabaseError, but a
missing table (a database without the schema), which is Misconfigured."""

from __future__ import annotations

import inspect

import psycopg2
import psycopg2.errors
import pytest

from emm.errors import DatabaseError, Misconfigured
from postgres.connection import map_errors

pytestmark = pytest.mark.timeout(30)

# psycopg2.Error is the root of what psycopg2 raises; its DB-API `Warning` is never raised.
LIBRARY_ERRORS = sorted(
    {
        cls
        for module in (psycopg2, psycopg2.errors)
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, Exception) and cls is not psycopg2.Warning
    },
    key=lambda cls: cls.__name__,
)


def test_every_error_class_is_found() -> None:
    assert len(LIBRARY_ERRORS) > 200  # one class per SQLSTATE
    assert psycopg2.OperationalError in LIBRARY_ERRORS


@pytest.mark.parametrize(
    "error",
    [e for e in LIBRARY_ERRORS if e is not psycopg2.errors.UndefinedTable],
    ids=lambda cls: cls.__name__,
)
def test_library_error_becomes_ours(error: type[Exception]) -> None:
    with pytest.raises(DatabaseError) as info, map_errors("while testing: "):
        raise error("first line\nDETAIL: second line")
    assert str(info.value) == "while testing: first line"
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_an_error_without_text_is_named_by_its_class() -> None:
    with pytest.raises(DatabaseError, match=r"^OperationalError$"), map_errors():
        raise psycopg2.OperationalError()


def test_other_errors_pass_through() -> None:
    with pytest.raises(KeyError), map_errors():
        raise KeyError("not the database")


def test_a_missing_table_says_run_emm_migrate() -> None:
    with pytest.raises(Misconfigured) as info, map_errors("while testing: "):
        raise psycopg2.errors.UndefinedTable('relation "energy_meters" does not exist\nLINE 1')
    assert str(info.value) == (
        'PostgreSQL database has no schema (relation "energy_meters" does not exist): '
        "run `emm migrate`"
    )
