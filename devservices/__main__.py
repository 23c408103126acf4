"""`python -m devservices DIR`: start InfluxDB 1.x and VictoriaMetrics with their data in DIR,
leave them running, and print their URLs as shell assignments of `EMM_TEST_INFLUX_V1_URL` and
`EMM_TEST_INFLUX_V2_URL` (for `.ci/run`)."""

from __future__ import annotations

import sys
from pathlib import Path

from devservices.influx import start_influxdb_v1, start_victoriametrics


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m devservices DIR", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    v1 = start_influxdb_v1(folder / "influxdb")
    v2 = start_victoriametrics(folder / "victoria-metrics")
    print(f"EMM_TEST_INFLUX_V1_URL={v1.url}")
    print(f"EMM_TEST_INFLUX_V2_URL={v2.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
