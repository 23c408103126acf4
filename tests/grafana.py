"""Grafana's side of a dashboard query, for tests: every InfluxQL query a dashboard file holds,
and the macros expanded as Grafana's InfluxDB data source expands them before it sends one.

- `$timeFilter` -> `time >= <from>ms and time <= <to>ms`
- `$__interval` / `$__interval_ms` -> the range divided by the panel's data points, rounded as
  Grafana rounds it (`round_interval`), never below the data source's `timeInterval`
- template variables: a single value as is; a multi-value or "All" variable as a regex group
  `(a|b)` of the values with regex characters escaped (Grafana's `interpolateQueryExpr`)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DASHBOARDS = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "dashboards"
MIN_INTERVAL_MS = 10_000  # the provisioned data source's timeInterval (10s)

# Grafana's rangeutil.roundInterval: (below this many ms, use this interval)
_ROUNDING = (
    (15, 10),
    (35, 20),
    (75, 50),
    (150, 100),
    (350, 200),
    (750, 500),
    (1_500, 1_000),
    (3_500, 2_000),
    (7_500, 5_000),
    (12_500, 10_000),
    (17_500, 15_000),
    (25_000, 20_000),
    (45_000, 30_000),
    (90_000, 60_000),
    (210_000, 120_000),
    (450_000, 300_000),
    (750_000, 600_000),
    (1_050_000, 900_000),
    (1_500_000, 1_200_000),
    (2_700_000, 1_800_000),
    (5_400_000, 3_600_000),
    (9_000_000, 7_200_000),
    (16_200_000, 10_800_000),
    (24_300_000, 21_600_000),
    (64_800_000, 43_200_000),
    (604_800_000, 86_400_000),
    (1_814_400_000, 604_800_000),
    (3_628_800_000, 2_592_000_000),
)


def round_interval(ms: float) -> int:
    """The interval Grafana picks for a raw interval of `ms`."""
    for below, interval in _ROUNDING:
        if ms < below:
            return interval
    return 31_536_000_000


def interval_text(ms: int) -> str:
    """An interval as Grafana writes it into a query (`5m`, `1h`, `100ms`)."""
    for unit, size in (("y", 31_536_000_000), ("w", 604_800_000), ("d", 86_400_000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1_000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


@dataclass(frozen=True)
class Query:
    """One query of a dashboard file, and where it is."""

    dashboard: str
    where: str  # "panel 3 target A", "variable meter", "annotation Counter resets"
    text: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.dashboard, self.where)


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DASHBOARDS / f"{name}.json").read_text())
    return data


def _panels(panels: Sequence[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # rows


def queries(path: Path) -> list[Query]:
    """Every InfluxDB query in a dashboard file: panel targets, query variables, annotations."""
    data = json.loads(path.read_text())
    name = path.stem
    out = []
    for panel in _panels(data.get("panels", [])):
        for target in panel.get("targets", []):
            assert target.get("rawQuery"), f"{name} panel {panel['id']}: not a raw query"
            out.append(
                Query(name, f"panel {panel['id']} target {target['refId']}", target["query"])
            )
    for variable in data.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            out.append(Query(name, f"variable {variable['name']}", variable["query"]))
    for annotation in data.get("annotations", {}).get("list", []):
        if annotation.get("datasource", {}).get("type") == "influxdb":
            out.append(Query(name, f"annotation {annotation['name']}", annotation["query"]))
    return out


def _escape_regex(value: str) -> str:
    return re.sub(r"[\\^$*+?.()|{}\[\]/]", lambda m: "\\" + m.group(0), value)


def expand(
    query: str,
    *,
    from_ms: int,
    to_ms: int,
    variables: Mapping[str, str | list[str]] | None = None,
    max_data_points: int = 1000,
) -> str:
    """`query` as Grafana sends it for the time range and variable values given (a list: a
    multi-value or "All" selection)."""
    interval_ms = max(MIN_INTERVAL_MS, round_interval((to_ms - from_ms) / max_data_points))
    text = query.replace("$timeFilter", f"time >= {from_ms}ms and time <= {to_ms}ms")
    text = text.replace("$__interval_ms", str(interval_ms))
    text = text.replace("$__interval", interval_text(interval_ms))
    for name, value in sorted((variables or {}).items(), key=lambda kv: -len(kv[0])):
        if isinstance(value, list):
            formatted = "(" + "|".join(_escape_regex(v) for v in value) + ")"
        else:
            formatted = value
        text = text.replace("${" + name + "}", formatted).replace("$" + name, formatted)
    leftover = re.search(r"\$\{?\w+", text)
    assert leftover is None, f"{leftover.group(0)} not expanded in {text!r}"
    return text
