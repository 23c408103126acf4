"""Writer serialisation speed: `writer.lines.reading_lines` over real readings, on one core.

    python -m bench.writer [--profile sdm630] [--meters 1000] [--repeat 5]
    python -m bench.pipeline --writer-serialise        (the same, from the pipeline bench)

The readings are what the worker produces for the simulator's meters (values from
`simulator.model.expected`, so every field of the profile), encoded and decoded as on the queue.
Prints one JSON object: fields serialised per second (energy fields plus the 7 status fields,
best of `repeat` runs), readings per second, and, for context, the rate including
`Reading.decode` of the message body, and everything the writer does per reading (decode,
counter-restart check, lines).
Target: at least 50,000 fields/s.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

from emm.messages import Meter, Reading, Status
from simulator.model import MeterSpec, expected
from writer.counters import CounterWatch
from writer.lines import reading_lines

TARGET_FIELDS_PER_S = 50_000
STATUS_FIELDS = 7  # up, error_code, latency_ms, requests, values, missing, errors
TICK_MS = 1_800_000_000_000


def readings(profile: str, meters: int, distinct: int = 50) -> list[Reading]:
    """One reading per meter as the worker publishes them (decoded from their own encoding).

    Values come from `distinct` simulated meters (computing them is slow) and are reused with
    each meter's own id and description.
    """
    values = [
        expected(MeterSpec.of_type(profile, seed=seed), TICK_MS)
        for seed in range(min(meters, distinct))
    ]
    type_ = MeterSpec.of_type(profile).type
    out = []
    for index in range(meters):
        meter = Meter(index + 1, "127.0.0.1", 5020, 1 + index % 247, type_, f"sim-{index}")
        status = Status(up=True, latency_ms=3.25, requests=4)
        reading = Reading(meter, TICK_MS, values[index % len(values)], status)
        out.append(Reading.decode(reading.encode()))
    return out


def _best_s(func, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - started)
    return best


def run(profile: str = "sdm630", meters: int = 1000, repeat: int = 5) -> dict:
    """Time serialising (and decoding + serialising) `meters` readings; best of `repeat`."""
    items = readings(profile, meters)
    bodies = [r.encode() for r in items]
    fields = sum(len(r.fields) + STATUS_FIELDS for r in items)
    lines_s = _best_s(lambda: [reading_lines(r) for r in items], repeat)
    both_s = _best_s(lambda: [reading_lines(Reading.decode(b)) for b in bodies], repeat)

    def full() -> None:  # what the writer does per reading: counter check, then lines
        watch = CounterWatch()
        for body in bodies:
            reading = Reading.decode(body)
            reading_lines(reading, watch.check(reading))

    full_s = _best_s(full, repeat)
    rate = fields / lines_s
    return {
        "mode": "writer_serialise",
        "profile": profile,
        "readings": len(items),
        "fields_per_reading": round(fields / len(items), 1),
        "fields_per_s": round(rate),
        "readings_per_s": round(len(items) / lines_s),
        "with_decode_fields_per_s": round(fields / both_s),
        "with_decode_readings_per_s": round(len(items) / both_s),
        "as_writer_readings_per_s": round(len(items) / full_s),
        "target_fields_per_s": TARGET_FIELDS_PER_S,
        "ok": rate >= TARGET_FIELDS_PER_S,
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.writer", description=__doc__)
    parser.add_argument("--profile", default="sdm630")
    parser.add_argument("--meters", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    print(json.dumps(run(args.profile, args.meters, args.repeat)))


if __name__ == "__main__":
    main()
