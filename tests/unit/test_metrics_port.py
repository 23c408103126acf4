"""emm.metrics.serve: a taken port is one warning, never a stopped service."""

from __future__ import annotations

import logging
import socket

import pytest

from emm.metrics import serve

pytestmark = pytest.mark.timeout(10)


def test_a_taken_port_is_a_warning_naming_the_setting(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.INFO, logger="emm.metrics"):
            assert serve(port) is False
    assert [r.getMessage() for r in caplog.records] == [
        f"metrics not served: port {port} is not free (Address already in use); set "
        "EMM_METRICS_PORT to a free port, or 0 to turn metrics off"
    ]
    assert caplog.records[0].levelno == logging.WARNING


def test_port_0_serves_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="emm.metrics"):
        assert serve(0) is False
    assert caplog.records == []
