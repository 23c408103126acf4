"""Text that comes from outside (hosts, types, descriptions): checked where it enters, and
quoted where it is logged.

A type or description becomes an InfluxDB tag value, so it must survive line protocol exactly:

- no control characters, line or paragraph separators, or unpaired surrogates (a newline would
  end the line, a surrogate cannot be encoded as UTF-8 at all);
- no backslash at the end or before a backslash, comma, equals sign or space: InfluxDB reads a
  backslash before the separator that follows a tag value as escaping it (line protocol cannot
  write a trailing backslash at all), and VictoriaMetrics unescapes a doubled one or drops the
  point. Every other backslash is stored exactly as written by both: it is not escaped (see
  `writer.lines`);
- at most `TYPE_MAX_CHARS` / `DESCRIPTION_MAX_CHARS` characters, far below InfluxDB's 64 KB
  series key.

Log lines quote such text with `quote`, so a host or type holding a newline cannot forge a
line of its own; `emm.log` escapes whatever else reaches a line.
"""

from __future__ import annotations

import re
import unicodedata

TYPE_MAX_CHARS = 64
DESCRIPTION_MAX_CHARS = 256
HOST_MAX_CHARS = 253  # the longest DNS name

_BAD_BACKSLASH = re.compile(r"\\(?:[\\, =]|\Z)")
# Control, line separator, paragraph separator, unpaired surrogate.
_BAD_CATEGORIES = frozenset({"Cc", "Zl", "Zp", "Cs"})


def _bad_character(text: str) -> str | None:
    """The first character of `text` that may not be in a tag or a host, or None."""
    if text.isprintable():  # the common case, fast: printable text has none of them
        return None
    return next((c for c in text if unicodedata.category(c) in _BAD_CATEGORIES), None)


def tag_problem(value: str, max_chars: int) -> str | None:
    """What makes `value` unfit as an InfluxDB tag value (see the module docstring), or None."""
    if len(value) > max_chars:
        return f"is {len(value)} characters long, at most {max_chars} are allowed"
    bad = _bad_character(value)
    if bad is not None:
        return f"contains the control character {bad!r}"
    if "\\" in value and _BAD_BACKSLASH.search(value):
        return (
            "has a backslash at the end or before a backslash, comma, equals sign or space "
            "(line protocol cannot carry it exactly)"
        )
    return None


def host_problem(host: str) -> str | None:
    """What makes `host` unfit as a device address, or None."""
    if len(host) > HOST_MAX_CHARS:
        return f"is {len(host)} characters long, at most {HOST_MAX_CHARS} are allowed"
    if any(c.isspace() for c in host) or _bad_character(host) is not None:
        return "contains whitespace or a control character"
    return None


def quote(text: object) -> str:
    """`text` as it may appear inside a log line: as is when it is plain (printable, no blanks,
    quotes or backslashes), else quoted and escaped as Python's `repr` does."""
    value = str(text)
    if value and value.isprintable() and not any(c in _QUOTED for c in value):
        return value
    return repr(value)


_QUOTED = frozenset(" '\"\\")


def one_line(text: str) -> str:
    """`text` with every character that could break a log line (controls, separators,
    surrogates) escaped as `repr` escapes it."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
