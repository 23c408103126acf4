"""Argument types of the command line: each checks its range, so a bad value is a usage error
(exit 2) naming the flag and what it allows."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

DEFAULT_PORT = 502


def bounded(low: int, high: int) -> Callable[[str], int]:
    """A whole number from `low` to `high`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be a whole number from {low} to {high}, got {text!r}"
            ) from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {value}")
        return value

    return parse


def seconds(text: str) -> float:
    """A finite number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text!r}")
    return value


def host_port(text: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `[IPv6]`, `[IPv6]:port` or a bare IPv6 address: (host, port or None)."""
    text = text.strip()
    port_text = ""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise argparse.ArgumentTypeError(f"expected [IPv6] or [IPv6]:PORT, got {text!r}")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host = text  # a name, an IPv4 address or a bare IPv6 address
    if not host:
        raise argparse.ArgumentTypeError(f"no host in {text!r}")
    if not port_text:
        return host, None
    try:
        return host, bounded(1, 65535)(port_text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"port in {text!r} {exc}") from None
