"""InfluxQL queries: InfluxDB 1.x `/query`, and InfluxDB 2.x through the same v1-compatible
endpoint (the bucket mapped as a database by DBRP, the API token sent as `Token`).

Used by the writer to restore its counter history at start and by `emm report`. Errors become
SinkUnavailable (unreachable, 5xx: try again) or SinkRejected (the query is wrong).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlencode

import urllib3

from emm import retry
from emm.errors import SinkRejected, SinkUnavailable
from emm.settings import WriterSettings
from writer.counters import HISTORY, CounterWatch

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Series:
    """One series of an answer: its tags and its rows (time in ms)."""

    name: str
    tags: dict[str, str]
    rows: list[dict[str, Any]]


class InfluxQL:
    """Runs InfluxQL statements against one database (v1) or bucket (v2)."""

    def __init__(
        self, url: str, database: str, *, api: str = "v1", token: str = "", timeout_s: float = 30
    ) -> None:
        self.where = f"InfluxDB {api} at {url}"
        self.url = url.rstrip("/") + "/query"
        self.database = database
        self.headers: dict[str, str] = {}
        if token and api == "v2":
            self.headers["Authorization"] = f"Token {token}"
        elif token:  # 1.x with auth on: "user:password"
            self.headers["Authorization"] = "Basic " + base64.b64encode(token.encode()).decode()
        self.http = urllib3.PoolManager(timeout=urllib3.Timeout(total=timeout_s), retries=False)

    def query(self, q: str) -> list[Series]:
        """Every series the statement(s) answered, in order."""
        params = urlencode({"db": self.database, "q": q, "epoch": "ms"})
        try:
            response = self.http.request("GET", f"{self.url}?{params}", headers=self.headers)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise SinkUnavailable(f"{self.where} unreachable: {exc}") from None
        text = response.data.decode(errors="replace")
        if response.status >= 500 or response.status == 429:
            raise SinkUnavailable(f"{self.where} answered HTTP {response.status}: {text[:300]}")
        try:
            answer = json.loads(text)
        except ValueError:
            raise SinkRejected(f"{self.where} answered {text[:300]!r} to {q!r}") from None
        if not isinstance(answer, dict):
            raise SinkRejected(f"{self.where} answered {text[:300]!r} to {q!r}")
        if "error" in answer:
            raise SinkRejected(f"{self.where}: {answer['error']} in {q!r}")
        return list(_series(answer, q, self.where))

    def close(self) -> None:
        self.http.clear()


def _series(answer: dict[str, Any], q: str, where: str) -> Iterator[Series]:
    for result in answer.get("results", []):
        if "error" in result:
            raise SinkRejected(f"{where}: {result['error']} in {q!r}")
        for s in result.get("series", []):
            columns = s["columns"]
            rows = [dict(zip(columns, values, strict=True)) for values in s.get("values", [])]
            yield Series(s.get("name", ""), s.get("tags") or {}, rows)


def quoted(name: str) -> str:
    """An identifier in double quotes, as InfluxQL wants a field or tag name."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def last_counters(db: InfluxQL, ticks: int) -> Iterator[tuple[int, int, dict[str, float]]]:
    """The last `ticks` stored counter values of every meter, `(meter_id, tick_ms, values)`:
    the counters are the fields of `energy_delta` (bar `gap_ticks`), their values from
    `energy`."""
    keys = db.query('SHOW FIELD KEYS FROM "energy_delta"')
    names = sorted({row["fieldKey"] for s in keys for row in s.rows} - {"gap_ticks"})
    if not names:
        return
    fields = ", ".join(quoted(n) for n in names)
    q = f'SELECT {fields} FROM "energy" GROUP BY "meter_id" ORDER BY time DESC LIMIT {ticks}'
    for s in db.query(q):
        meter_id = int(s.tags["meter_id"])
        for row in s.rows:
            values = {n: float(row[n]) for n in names if row.get(n) is not None}
            if values:
                yield meter_id, int(row["time"]), values


async def restore_counters(
    watch: CounterWatch, settings: WriterSettings, stop: asyncio.Event
) -> None:
    """Rebuild `watch`'s history from what InfluxDB stored, retrying while it is unavailable
    (readings wait for it). A server that answers no InfluxQL (or refuses the query) leaves the
    history empty: each meter's deltas then start from its next reading."""
    db = InfluxQL(
        settings.influx_url,
        settings.influx_bucket,
        api=settings.influx_api,
        token=settings.influx_token,
        timeout_s=settings.write_timeout_s,
    )

    def load() -> int:
        return watch.restore(list(last_counters(db, HISTORY)))

    try:
        meters = await retry.sink_write(settings.retry_max_s).call(
            partial(asyncio.to_thread, load), stop=lambda _state: stop.is_set()
        )
        log.info("energy deltas: the last counter values of %d meters restored", meters)
    except Exception as exc:  # never a reason to hold the readings back
        log.warning(
            "energy deltas: counter values not restored (%s); each meter's deltas "
            "start from its next reading",
            exc,
        )
    finally:
        db.close()
