"""The README's metrics table lists every metric the services define, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

import scheduler.metrics
import simulator.metrics
import worker.metrics
import writer.metrics

pytestmark = pytest.mark.timeout(10)

README = Path(__file__).resolve().parents[2] / "README.md"
SERVICES = (scheduler.metrics, simulator.metrics, worker.metrics, writer.metrics)


def _defined() -> dict[str, str]:
    """Every `emm_*` metric by its exposed name (counters with `_total`), with its type."""
    assert SERVICES  # imported for the metrics they register
    names = {}
    for family in REGISTRY.collect():
        if family.name.startswith("emm_"):
            suffix = "_total" if family.type == "counter" else ""
            names[family.name + suffix] = family.type
    return names


def _documented() -> dict[str, str]:
    section = README.read_text().split("\n## Metrics\n", 1)[1].split("\n### ", 1)[0]
    rows = re.findall(r"^\| `(emm_\w+)` \| (\w+) \|", section, re.M)
    return dict(rows)


def test_the_readme_documents_every_metric_with_its_type() -> None:
    assert _documented() == _defined()


@pytest.mark.parametrize("name", sorted(_defined()))
def test_names_follow_prometheus_conventions(name: str) -> None:
    service = name.split("_")[1]
    assert service in ("scheduler", "worker", "writer", "simulator"), name
    kind = _defined()[name]
    assert name.endswith("_total") == (kind == "counter"), name
