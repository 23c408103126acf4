"""InfluxDB writes: the v2 API through influxdb-client, or the 1.x `/write` endpoint.

HTTP and client-library errors become SinkUnavailable (retry later) or SinkRejected here:
400 (the data is bad), 413 (the body is over the server's limit, InfluxDB 1.x `max-body-size`:
a smaller batch will do) and 422 (InfluxDB 2: points outside the bucket's retention).
Retries belong to the writer, never to the client: influxdb-client's batching API drops a batch
once its retry time runs out, so it is not used.
"""

from __future__ import annotations

import base64
from typing import Protocol
from urllib.parse import urlencode

import urllib3
from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

from emm.errors import SinkRejected, SinkUnavailable
from emm.settings import WriterSettings


class Sink(Protocol):
    """Somewhere line protocol can be written."""

    def write(self, chunks: list[bytes]) -> None:
        """Write the lines in `chunks` (each one or more lines, no trailing newline)."""
        ...

    def close(self) -> None: ...


# Statuses that say the data (or its amount) is the problem: a retry of the same write fails
# again, a split batch may not.
_REJECTED = {
    400: "rejected the write",
    413: "refused the write as too large",
    422: "refused the write as unprocessable",
}


def _rejected_or_unavailable(status: int, body: str, where: str) -> Exception:
    text = " ".join(body.split())[:500]
    if status in _REJECTED:
        return SinkRejected(f"{where} {_REJECTED[status]} (HTTP {status}): {text}")
    return SinkUnavailable(f"{where} answered HTTP {status}: {text}")


class InfluxV2Sink:
    """InfluxDB 2.x (or anything speaking its write API) via influxdb-client."""

    def __init__(self, settings: WriterSettings) -> None:
        self.where = f"InfluxDB v2 at {settings.influx_url}"
        self.bucket = settings.influx_bucket
        self.org = settings.influx_org or "-"
        self.client = InfluxDBClient(
            url=settings.influx_url,
            token=settings.influx_token,
            org=self.org,
            timeout=int(settings.write_timeout_s * 1000),
            retries=False,
        )
        self.api = self.client.write_api(write_options=SYNCHRONOUS)

    def write(self, chunks: list[bytes]) -> None:
        try:
            self.api.write(
                bucket=self.bucket,
                org=self.org,
                record=b"\n".join(chunks),
                write_precision=WritePrecision.MS,  # type: ignore[arg-type]
            )
        except ApiException as exc:
            raise _rejected_or_unavailable(
                int(exc.status or 0), str(exc.body or exc.reason), self.where
            ) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise SinkUnavailable(f"{self.where} unreachable: {exc}") from None

    def close(self) -> None:
        self.client.close()


class InfluxV1Sink:
    """InfluxDB 1.x `/write` (database = bucket; token `user:password` when auth is on)."""

    def __init__(self, settings: WriterSettings) -> None:
        self.where = f"InfluxDB v1 at {settings.influx_url}"
        self.url = f"{settings.influx_url}/write?" + urlencode(
            {"db": settings.influx_bucket, "precision": "ms"}
        )
        self.headers = {"Content-Type": "text/plain; charset=utf-8"}
        if settings.influx_token:
            creds = base64.b64encode(settings.influx_token.encode()).decode()
            self.headers["Authorization"] = f"Basic {creds}"
        self.http = urllib3.PoolManager(
            timeout=urllib3.Timeout(total=settings.write_timeout_s), retries=False
        )

    def write(self, chunks: list[bytes]) -> None:
        body = b"\n".join(chunks)
        try:
            response = self.http.request("POST", self.url, body=body, headers=self.headers)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise SinkUnavailable(f"{self.where} unreachable: {exc}") from None
        if response.status != 204:
            raise _rejected_or_unavailable(
                response.status, response.data.decode(errors="replace"), self.where
            )

    def close(self) -> None:
        self.http.clear()


def make_sink(settings: WriterSettings) -> Sink:
    """The sink `EMM_INFLUX_API` asks for."""
    if settings.influx_api == "v1":
        return InfluxV1Sink(settings)
    return InfluxV2Sink(settings)
