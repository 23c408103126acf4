"""What the tests share besides fixtures: skipping (or failing under CI) when a service is
missing, and the checkout's root. The servers, ports, processes and readers the tests use
come from `devservices`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CI = bool(os.environ.get("CI"))
ROOT = Path(__file__).resolve().parent.parent


def unavailable(reason: str) -> None:
    """Skip locally, fail under CI: a CI run must not pass by skipping the real services."""
    if CI:
        pytest.fail(f"service unavailable under CI: {reason}")
    pytest.skip(reason)
