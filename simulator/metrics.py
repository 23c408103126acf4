"""The simulator's Prometheus metrics (README, "Metrics"), read from its `Stats` at every
scrape; served by `emm.metrics.serve`."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from simulator.server import Stats


class _StatsCollector(Collector):
    """The counters of the `Stats` of the simulator running in this process."""

    def __init__(self) -> None:
        self.stats: Stats | None = None

    def collect(self) -> Iterator[Metric]:
        s = self.stats or Stats()
        requests = CounterMetricFamily(
            "emm_simulator_requests",
            "Modbus requests by outcome: answered with data, with an exception, dropped "
            "(no answer), reset (connection closed)",
            labels=["outcome"],
        )
        requests.add_metric(["answered"], s.reads)
        requests.add_metric(["exception"], sum(s.exceptions.values()))
        requests.add_metric(["dropped"], s.dropped)
        requests.add_metric(["reset"], s.resets)
        yield requests
        yield CounterMetricFamily(
            "emm_simulator_writes_refused", "Write requests refused", value=s.writes_refused
        )
        yield CounterMetricFamily(
            "emm_simulator_connections", "Connections accepted", value=s.connections
        )
        yield CounterMetricFamily(
            "emm_simulator_connections_refused",
            "Connections over a port's --max-connections, closed at once",
            value=s.refused,
        )
        yield GaugeMetricFamily(
            "emm_simulator_up",
            "1 while the simulator serves its meters",
            value=float(self.stats is not None),
        )


STATS = _StatsCollector()
REGISTRY.register(STATS)
