"""InfluxDB writes: the v2 API through influxdb-client, or the 1.x `/write` endpoint.

HTTP and client-library errors become SinkUnavailable (retry later) or SinkRejected here:
400 (the data is bad), 413 (the body is over the server's limit, InfluxDB 1.x `max-body-size`:
a smaller batch will do) and 422 (InfluxDB 2: points outside the bucket's retention).
Retries belong to the writer, never to the client: influxdb-client's batching API drops a batch
once its retry time runs out, so it is not used.

`check` asks the server at start whether writes as configured can work at all: its version
(the `X-Influxdb-Version` header of `/ping`) against `EMM_INFLUX_API`, then the database (v1)
or bucket (v2) and the credentials. What cannot mend itself is Misconfigured; an unreachable or
failing server is SinkUnavailable, and the writer waits for it.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Protocol
from urllib.parse import urlencode

import urllib3
from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

from emm.errors import Misconfigured, SinkRejected, SinkUnavailable
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
        self.timeout_s = settings.write_timeout_s
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
            reason = unreachable_reason(exc, self.timeout_s)
            raise SinkUnavailable(f"{self.where} unreachable: {reason}") from None

    def close(self) -> None:
        self.client.close()


class InfluxV1Sink:
    """InfluxDB 1.x `/write` (database = bucket; token `user:password` when auth is on)."""

    def __init__(self, settings: WriterSettings) -> None:
        self.where = f"InfluxDB v1 at {settings.influx_url}"
        self.timeout_s = settings.write_timeout_s
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
            reason = unreachable_reason(exc, self.timeout_s)
            raise SinkUnavailable(f"{self.where} unreachable: {reason}") from None
        if response.status != 204:
            raise _rejected_or_unavailable(
                response.status, response.data.decode(errors="replace"), self.where
            )

    def close(self) -> None:
        self.http.clear()


def unreachable_reason(exc: BaseException, timeout_s: float) -> str:
    """The operating system's reason under a urllib3 error: "connection refused"."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    # urllib3's NewConnectionError is also a ConnectTimeoutError: the errno comes first
    for error in chain:
        if isinstance(error, OSError) and isinstance(error.errno, int):
            return os.strerror(error.errno).lower()
    if any(isinstance(e, TimeoutError | urllib3.exceptions.TimeoutError) for e in chain):
        return f"no answer within {timeout_s:g} s"
    return str(exc)


def check(settings: WriterSettings) -> str:
    """Whether InfluxDB at `EMM_INFLUX_URL` can take writes as configured; what was found, as a
    phrase for the start-up line. Raises Misconfigured (the other API, no such database or
    bucket, credentials refused) or SinkUnavailable (unreachable, a server error).

    A server without the version header (VictoriaMetrics answers /ping too, and takes any
    database or bucket name) is only checked to answer.
    """
    url = settings.influx_url
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(total=settings.write_timeout_s), retries=False
    )
    try:
        ping = _get(http, f"{url}/ping", {}, settings)
        version = ping.headers.get("X-Influxdb-Version")
        if version is None:
            return f"{url} (no X-Influxdb-Version header: not InfluxDB, bucket not checked)"
        where = f"InfluxDB {version} at {url}"
        major = version.lstrip("vV").split(".")[0]
        if settings.influx_api == "v2" and major == "1":
            raise Misconfigured(f"{where} has no v2 API: set EMM_INFLUX_API=v1")
        if settings.influx_api == "v1" and major != "1":
            raise Misconfigured(
                f"{where} takes v2 writes: set EMM_INFLUX_API=v2 (with EMM_INFLUX_TOKEN and "
                "EMM_INFLUX_ORG)"
            )
        if settings.influx_api == "v1":
            _check_database(http, where, settings)
        else:
            _check_bucket(http, where, settings)
        return f"{where}, {'database' if settings.influx_api == 'v1' else 'bucket'} " + repr(
            settings.influx_bucket
        )
    finally:
        http.clear()


def _get(
    http: urllib3.PoolManager, url: str, headers: dict[str, str], settings: WriterSettings
) -> urllib3.BaseHTTPResponse:
    """GET `url`; unreachable or a server error is SinkUnavailable, refused credentials
    Misconfigured."""
    try:
        response = http.request("GET", url, headers=headers)
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise SinkUnavailable(unreachable_reason(exc, settings.write_timeout_s)) from None
    if response.status >= 500:
        raise SinkUnavailable(f"HTTP {response.status} from {url.split('?')[0]}")
    if response.status in (401, 403):
        raise Misconfigured(
            f"InfluxDB at {settings.influx_url} refused the credentials in EMM_INFLUX_TOKEN "
            f"(HTTP {response.status})"
        )
    return response


def _check_database(http: urllib3.PoolManager, where: str, settings: WriterSettings) -> None:
    headers = {}
    if settings.influx_token:
        creds = base64.b64encode(settings.influx_token.encode()).decode()
        headers["Authorization"] = f"Basic {creds}"
    query = urlencode({"q": "SHOW DATABASES"})
    response = _get(http, f"{settings.influx_url}/query?{query}", headers, settings)
    try:
        series = json.loads(response.data)["results"][0].get("series", [])
        names = {row[0] for s in series for row in s.get("values", [])}
    except (ValueError, KeyError, IndexError, TypeError):
        raise SinkUnavailable(f"{where}: SHOW DATABASES gave no list") from None
    if settings.influx_bucket not in names:
        raise Misconfigured(
            f"{where} has no database {settings.influx_bucket!r}: create it (CREATE DATABASE "
            f'"{settings.influx_bucket}") or set EMM_INFLUX_BUCKET'
        )


def _check_bucket(http: urllib3.PoolManager, where: str, settings: WriterSettings) -> None:
    params = {"name": settings.influx_bucket}
    if settings.influx_org:
        params["org"] = settings.influx_org
    headers = {"Authorization": f"Token {settings.influx_token}"} if settings.influx_token else {}
    url = f"{settings.influx_url}/api/v2/buckets?{urlencode(params)}"
    response = _get(http, url, headers, settings)
    if response.status == 404:  # the organisation, most likely
        text = " ".join(response.data.decode(errors="replace").split())[:200]
        raise Misconfigured(f"{where}: {text} (EMM_INFLUX_ORG={settings.influx_org!r})")
    try:
        buckets = json.loads(response.data)["buckets"]
    except (ValueError, KeyError, TypeError):
        raise SinkUnavailable(f"{where}: the bucket list is not JSON") from None
    if not buckets:
        raise Misconfigured(
            f"{where} has no bucket {settings.influx_bucket!r}"
            + (f" in organisation {settings.influx_org!r}" if settings.influx_org else "")
            + ": create it (influx bucket create) or set EMM_INFLUX_BUCKET"
        )


def make_sink(settings: WriterSettings) -> Sink:
    """The sink `EMM_INFLUX_API` asks for."""
    if settings.influx_api == "v1":
        return InfluxV1Sink(settings)
    return InfluxV2Sink(settings)
