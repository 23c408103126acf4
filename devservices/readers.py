"""Reading stored points back: one InfluxQL reader (InfluxDB 1.x `/query`), one VictoriaMetrics
reader (`/api/v1/export`), and the one parser of their answers (a stream of JSON values)."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from typing import Any


class QueryError(RuntimeError):
    """InfluxDB answered a statement with an error."""


def json_values(text: str) -> list[Any]:
    """Every JSON value of an answer: one document, or several separated by whitespace
    (InfluxDB's chunked answers, VictoriaMetrics' export lines)."""
    out: list[Any] = []
    decoder, pos = json.JSONDecoder(), 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return out
        value, pos = decoder.raw_decode(text, pos)
        out.append(value)


def _fetch(url: str, data: bytes | None, timeout_s: float) -> list[Any]:
    with urllib.request.urlopen(url, data=data, timeout=timeout_s) as resp:
        return json_values(resp.read().decode())


class InfluxQL:
    """One database on an InfluxDB 1.x server: statements, queries, and line protocol writes."""

    def __init__(self, url: str, database: str, timeout_s: float = 30) -> None:
        self.url = url.rstrip("/")
        self.database = database
        self.timeout_s = timeout_s

    def query(self, q: str) -> list[dict[str, Any]]:
        """The rows of a query as dicts, time in ms; large answers come in chunks."""
        params = urllib.parse.urlencode(
            {"db": self.database, "q": q, "epoch": "ms", "chunked": "true", "chunk_size": "20000"}
        )
        return self._rows(q, _fetch(f"{self.url}/query?{params}", None, self.timeout_s))

    def execute(self, q: str) -> None:
        """Run a statement that changes something (POST), e.g. `CREATE DATABASE`."""
        body = urllib.parse.urlencode({"db": self.database, "q": q}).encode()
        self._rows(q, _fetch(f"{self.url}/query", body, self.timeout_s))

    def create_database(self) -> None:
        self.execute(f'CREATE DATABASE "{self.database}"')

    def drop_database(self) -> None:
        self.execute(f'DROP DATABASE "{self.database}"')

    def write(self, lines: str) -> None:
        """Write line protocol (ms precision) directly."""
        params = urllib.parse.urlencode({"db": self.database, "precision": "ms"})
        with urllib.request.urlopen(
            f"{self.url}/write?{params}", data=lines.encode(), timeout=self.timeout_s
        ) as resp:
            resp.read()

    @staticmethod
    def _rows(q: str, answers: list[Any]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for answer in answers:
            for result in answer.get("results", []):
                if "error" in result:
                    raise QueryError(f"InfluxQL {q!r}: {result['error']}")
                for series in result.get("series", []):
                    columns = series["columns"]
                    rows.extend(dict(zip(columns, v, strict=True)) for v in series["values"])
        return rows


class VictoriaMetrics:
    """Reads back what was written to VictoriaMetrics through InfluxDB's v2 write API."""

    def __init__(self, url: str, timeout_s: float = 30) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def export(
        self, match: str, start_ms: int | None = None, end_ms: int | None = None
    ) -> list[dict[str, Any]]:
        """Raw samples of the series matching `match`, one dict per series (`metric`,
        `timestamps`, `values`); `end_ms` is inclusive."""
        params = {"match[]": match}
        if start_ms is not None:
            params["start"] = f"{start_ms / 1000:.3f}"
        if end_ms is not None:
            params["end"] = f"{end_ms / 1000:.3f}"
        body = urllib.parse.urlencode(params).encode()
        return _fetch(f"{self.url}/api/v1/export", body, self.timeout_s)

    def flush(self) -> None:
        """Make just-written samples visible to queries."""
        with urllib.request.urlopen(
            f"{self.url}/internal/force_flush", timeout=self.timeout_s
        ) as resp:
            resp.read()
