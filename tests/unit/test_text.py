"""emm.text: outside text checked where it enters and quoted where it is logged."""

from __future__ import annotations

import logging

import pytest

from emm.log import setup_logging
from emm.text import host_problem, one_line, quote, tag_problem

pytestmark = pytest.mark.timeout(30)

BACKSLASH = (
    "has a backslash at the end or before a backslash, comma, equals sign or space (line "
    "protocol cannot carry it exactly)"
)


@pytest.mark.parametrize(
    ("text", "quoted"),
    [
        ("192.0.2.4", "192.0.2.4"),
        ("sdm630", "sdm630"),
        ("Zähler", "Zähler"),
        ("", "''"),
        ("hall A", "'hall A'"),
        ("evil\n2026-01-01 ERROR forged", "'evil\\n2026-01-01 ERROR forged'"),
        ("\x1b[31mred", "'\\x1b[31mred'"),
        ("back\\slash", "'back\\\\slash'"),
        ("x\ud800", "'x\\ud800'"),
        ("line\u2028sep", "'line\\u2028sep'"),
    ],
)
def test_quote_leaves_plain_text_and_escapes_the_rest(text: str, quoted: str) -> None:
    assert quote(text) == quoted
    assert "\n" not in quote(text)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("hall A, line 3 = left", None),
        ("C:\\data\\x", None),
        ("Zähler im Keller", None),
        ("", None),
        ("a\nb", "contains the control character '\\n'"),
        ("a\tb", "contains the control character '\\t'"),
        ("a\x00b", "contains the control character '\\x00'"),
        ("a\u2028b", "contains the control character '\\u2028'"),
        ("a\ud800b", "contains the control character '\\ud800'"),
        ("ends\\", BACKSLASH),
        ("a\\ b", BACKSLASH),
        ("a\\\\b", BACKSLASH),
        ("a\\,b", BACKSLASH),
        ("a\\=b", BACKSLASH),
        ("x" * 65, "is 65 characters long, at most 64 are allowed"),
    ],
)
def test_tag_problem(value: str, problem: str | None) -> None:
    assert tag_problem(value, 64) == problem


@pytest.mark.parametrize(
    ("host", "ok"),
    [("192.0.2.4", True), ("meter-1.example", True), ("a b", False), ("a\nb", False)],
)
def test_host_problem(host: str, ok: bool) -> None:
    assert (host_problem(host) is None) == ok
    assert host_problem("h" * 254) is not None


def test_one_line_escapes_only_what_breaks_a_line() -> None:
    assert one_line("meter 5 (hall A) ok") == "meter 5 (hall A) ok"
    assert one_line("a\nb\r\x1bc\u2028") == "a\\nb\\r\\x1bc\\u2028"


def test_a_log_line_stays_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    setup_logging("INFO", "worker")
    try:
        logging.getLogger("worker.test").warning(
            "meter %d (%s) offline", 5, "evil\n2026-12-01 INFO worker forged: all good"
        )
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("worker.test").exception("failed\nhere")
    finally:  # back to the test runner's handlers
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith(
        "WARNING worker worker.test: meter 5 (evil\\n2026-12-01 INFO worker forged: all good) "
        "offline"
    )
    assert lines[1].endswith("ERROR worker worker.test: failed\\nhere")
    assert lines[2] == "Traceback (most recent call last):"  # the traceback follows its line
