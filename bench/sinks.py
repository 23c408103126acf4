"""The run's sink (a private InfluxDB 1.x or VictoriaMetrics): the writer's settings for it, and
what it stored in the window, read back through the dev services' readers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from devservices import influx
from devservices.readers import InfluxQL, VictoriaMetrics

STATUS_FIELDS = ("requests", "latency_ms", "up")


@dataclass
class SinkCounts:
    """What the sink holds for the window, per tick."""

    status: dict[int, int] = field(default_factory=dict)  # tick -> meter_status points
    up: dict[int, int] = field(default_factory=dict)
    requests: dict[int, float] = field(default_factory=dict)
    latency_ms: dict[int, float] = field(default_factory=dict)  # sum per tick
    latencies: list[float] = field(default_factory=list)
    energy_points: int = 0


class Sink:
    """The private InfluxDB 1.x or VictoriaMetrics: settings for the writer, counting after."""

    def __init__(self, api: str, service: influx.Service) -> None:
        self.api = api
        self.service = service
        self.url = service.url
        self.database = "energy"
        self.influxql = InfluxQL(self.url, self.database, timeout_s=120)
        self.victoria = VictoriaMetrics(self.url, timeout_s=120)
        if api == "v1":
            self.influxql.create_database()

    def writer_env(self) -> dict[str, str]:
        """The writer's `EMM_INFLUX_*` settings for this sink."""
        env = {
            "EMM_INFLUX_URL": self.url,
            "EMM_INFLUX_API": self.api,
            "EMM_INFLUX_BUCKET": self.database,
        }
        if self.api == "v2":
            env.update({"EMM_INFLUX_ORG": "emm", "EMM_INFLUX_TOKEN": "bench"})
        return env

    def count(self, start_ms: int, end_ms: int, energy_field: str) -> SinkCounts:
        """What was stored for the ticks in [start_ms, end_ms)."""
        if self.api == "v1":
            return self._count_v1(start_ms, end_ms, energy_field)
        return self._count_v2(start_ms, end_ms, energy_field)

    def _count_v1(self, start_ms: int, end_ms: int, energy_field: str) -> SinkCounts:
        where = f"time >= {start_ms}ms AND time < {end_ms}ms"
        counts = SinkCounts()
        status = self.influxql.query(
            f'SELECT "requests", "latency_ms", "up" FROM "meter_status" WHERE {where}'
        )
        for row in status:
            t = int(row["time"])
            counts.status[t] = counts.status.get(t, 0) + 1
            counts.up[t] = counts.up.get(t, 0) + (1 if row["up"] else 0)
            counts.requests[t] = counts.requests.get(t, 0) + float(row["requests"] or 0)
            latency = float(row["latency_ms"] or 0)
            counts.latency_ms[t] = counts.latency_ms.get(t, 0) + latency
            counts.latencies.append(latency)
        energy = self.influxql.query(f'SELECT count("{energy_field}") FROM "energy" WHERE {where}')
        counts.energy_points = int(energy[0]["count"]) if energy else 0
        return counts

    def gateway_load(self, start_ms: int, end_ms: int) -> dict[str, dict[str, float]] | None:
        """Per gateway (host:port): the mean and largest `gateway_status` utilisation over the
        ticks in [start_ms, end_ms), the ticks reported and the jobs dropped as late (v1 only)."""
        if self.api != "v1":
            return None
        rows = self.influxql.query(
            'SELECT "utilisation", "late", "gateway"::tag FROM "gateway_status" '
            f"WHERE time >= {start_ms}ms AND time < {end_ms}ms"
        )
        per: dict[str, list[tuple[float, int]]] = {}
        for row in rows:
            per.setdefault(row["gateway"], []).append((float(row["utilisation"]), int(row["late"])))
        return {
            gateway: {
                "utilisation_mean": round(sum(u for u, _ in ticks) / len(ticks), 4),
                "utilisation_max": round(max(u for u, _ in ticks), 4),
                "ticks": len(ticks),
                "late": sum(late for _, late in ticks),
            }
            for gateway, ticks in sorted(per.items())
        }

    def _count_v2(self, start_ms: int, end_ms: int, energy_field: str) -> SinkCounts:
        self.victoria.flush()
        counts = SinkCounts()
        last_ms = end_ms - 1  # export's end is inclusive
        per: dict[str, dict[tuple[str, int], float]] = {}
        for name in STATUS_FIELDS:
            values: dict[tuple[str, int], float] = {}
            for series in self.victoria.export(f"meter_status_{name}", start_ms, last_ms):
                key = series["metric"].get("meter_id", "")
                for t, v in zip(series["timestamps"], series["values"], strict=True):
                    values[(key, int(t))] = float(v)
            per[name] = values
        for (_meter, t), requests in per["requests"].items():
            counts.status[t] = counts.status.get(t, 0) + 1
            counts.requests[t] = counts.requests.get(t, 0) + requests
        for (_meter, t), up in per["up"].items():
            counts.up[t] = counts.up.get(t, 0) + (1 if up else 0)
        for (_meter, t), latency in per["latency_ms"].items():
            counts.latency_ms[t] = counts.latency_ms.get(t, 0) + latency
            counts.latencies.append(latency)
        for series in self.victoria.export(f"energy_{energy_field}", start_ms, last_ms):
            counts.energy_points += len(series["timestamps"])
        return counts

    def stop(self) -> None:
        self.service.stop()


def start_sink(api: str, folder: Path) -> Sink:
    """A private InfluxDB 1.x (`v1`) or VictoriaMetrics (`v2`) with its data in `folder`."""
    if api == "v1":
        return Sink(api, influx.start_influxdb_v1(folder / "influxdb"))
    return Sink(api, influx.start_victoriametrics(folder / "victoria-metrics"))
