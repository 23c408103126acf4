"""A gateway's budget per tick (pure): shared by the worker's measured `gateway_status` and by
`emm check`'s estimate before anything is read.

A gateway answers one request at a time on each connection, so a tick gives it `period_ms` of
time per connection it allows; its utilisation is the time it is busy over that capacity, and
a gateway busier than WARN_ABOVE of it is over budget: near 1 the last meters are read late,
above it some are not read at all.
"""

from __future__ import annotations

import math

WARN_ABOVE = 0.8  # the share of a gateway's tick past which it is over budget


def utilisation(busy_ms: float, period_ms: float, connections: int) -> float:
    """The share of `connections` periods of `period_ms` that `busy_ms` fills (above 1: it
    overran)."""
    capacity_ms = period_ms * connections
    return busy_ms / capacity_ms if capacity_ms > 0 else 0.0


def meters_that_fit(per_meter_ms: float, period_ms: float, connections: int) -> int:
    """How many meters costing `per_meter_ms` each fit within WARN_ABOVE of the tick."""
    return math.floor(WARN_ABOVE * period_ms * connections / per_meter_ms)


def least_busy_ms(requests: int, pause_between_requests_ms: int) -> float:
    """The least time a meter read in `requests` requests holds its gateway at a tick: the
    pause the gateway asks for before each request (the answers themselves take more, unknown
    until read: the worker's `gateway_status` measures them)."""
    return requests * pause_between_requests_ms
