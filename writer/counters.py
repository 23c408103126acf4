"""Counter restarts: an energy counter that goes down means the meter restarted counting
(a reboot, a reset, a replaced meter). The reading is stored as the meter reported it and its
`meter_status` point is flagged, so a consumption panel (non_negative_difference) never shows
the drop as negative consumption and an operator can see when it happened.

State is the writer's: the newest tick and counter values seen per meter, in memory.
"""

from __future__ import annotations

import logging

from emm.messages import Reading

log = logging.getLogger(__name__)


class CounterWatch:
    """Remembers the last counter values per meter and reports the ones that went down."""

    def __init__(self) -> None:
        self._last: dict[int, tuple[int, dict[str, float]]] = {}

    def check(self, reading: Reading) -> list[str]:
        """Names of the reading's counters lower than in the meter's previous tick.

        A reading older than one already seen (delivered late) is not compared.
        """
        current = {n: reading.fields[n] for n in reading.counters if n in reading.fields}
        if not current:
            return []
        meter_id = reading.meter.id
        last = self._last.get(meter_id)
        if last is not None and reading.tick_ms <= last[0]:
            return []
        previous = last[1] if last is not None else {}
        resets = sorted(n for n, v in current.items() if n in previous and v < previous[n])
        self._last[meter_id] = (reading.tick_ms, {**previous, **current})
        if resets:
            log.warning(
                "meter %d: counter(s) %s went down at tick %d (meter restarted counting?); "
                "stored as reported and flagged in meter_status",
                meter_id,
                ", ".join(resets),
                reading.tick_ms,
            )
        return resets
