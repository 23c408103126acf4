"""Prometheus metrics: the HTTP endpoint every service serves, and reading totals back.

Each service defines its own metrics in its `metrics` module (`worker/metrics.py`, ...), named
`emm_<service>_...` with `_total` for counters and `_seconds` for durations, labelled at most
by gateway (host:port) and by small fixed sets (an error code, an outcome), never by meter or
register: a fleet of thousands of meters must not make thousands of series per metric.

`EMM_METRICS_PORT` (default 9100, the port the Kubernetes manifests scrape) says where; 0 turns
the endpoint off. Several services on one host need a port each: a port already taken is
logged once as a warning and the service runs on without metrics, since metrics must never
stop the readings.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Histogram, start_http_server

log = logging.getLogger(__name__)

# Seconds: a Modbus request takes milliseconds on a LAN and up to the read timeout (seconds);
# an InfluxDB write of a batch takes tens of milliseconds to seconds under load.
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def serve(port: int, variable: str = "EMM_METRICS_PORT") -> bool:
    """Serve this process's metrics at http://0.0.0.0:`port`/metrics from a thread of its own;
    False (and a warning naming `variable`) when the port is taken or 0 turned it off."""
    if port == 0:
        return False
    try:
        start_http_server(port)
    except OSError as exc:
        log.warning(
            "metrics not served: port %d is not free (%s); set %s to a free port, or 0 to "
            "turn metrics off",
            port,
            exc.strerror or exc,
            variable,
        )
        return False
    log.info("metrics served on port %d (/metrics)", port)
    return True


def total(metric: Counter | Histogram, **labels: str) -> float:
    """The sum of `metric`'s counts over the label values that match `labels` (a counter's
    `_total`, a histogram's `_count`), as Prometheus would sum them."""
    suffix = "_count" if isinstance(metric, Histogram) else "_total"
    return sum(
        sample.value
        for family in metric.collect()
        for sample in family.samples
        if sample.name.endswith(suffix)
        and all(sample.labels.get(key) == value for key, value in labels.items())
    )


def by_label(metric: Counter, label: str) -> dict[str, float]:
    """`metric`'s counts summed per value of `label` (those above zero)."""
    counts: dict[str, float] = {}
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.value:
                key = sample.labels.get(label, "")
                counts[key] = counts.get(key, 0.0) + sample.value
    return counts
