"""Plot pipeline runs: stored throughput and p99 tick-to-stored latency against meters.

    python -m bench.plot OUT.png RUN.json [RUN.json ...]

Each RUN.json is the output of `python -m bench.pipeline --out`. Runs are grouped into one line
per (workers, latency, port-per-meter) setting. Needs matplotlib (the `bench` extra).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

P99_TARGET_S = 1.5


def _label(run: dict, commits: bool) -> str:
    """The line a run belongs to: its setting, and its commit when the runs span several."""
    cfg = run["config"]
    text = f"{cfg['workers']} worker{'s' if cfg['workers'] != 1 else ''}"
    if cfg.get("latency_ms"):
        text += f", {cfg['latency_ms']:g} ms device latency"
    if cfg.get("port_per_meter"):
        text += ", port per meter"
    if cfg.get("interleave_gateways"):
        text += ", gateways interleaved"
    text += f", every {cfg['period_s']:g} s"
    if commits:
        text += f" @ {run.get('code', {}).get('commit', '?')}"
    return text


def plot(out: Path, runs: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[dict]] = defaultdict(list)
    commits = len({run.get("code", {}).get("commit") for run in runs}) > 1
    for run in runs:
        groups[_label(run, commits)].append(run)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    meters_all = sorted({r["config"]["meters"] for r in runs})
    periods = {r["config"]["period_s"] for r in runs}
    for index, (label, group) in enumerate(sorted(groups.items())):
        color = f"C{index}"  # the same line colour in both panels
        group.sort(key=lambda r: r["config"]["meters"])
        meters = [r["config"]["meters"] for r in group]
        stored = [r["meter_reads_per_s"] for r in group]
        left.plot(meters, stored, "o-", color=color, label=label)
        for r, m, y in zip(group, meters, stored, strict=True):
            lost = r["readings_lost"] / max(1, r["readings_expected"])
            if lost > 0.005:
                left.annotate(
                    f"{lost:.0%} lost",
                    (m, y),
                    textcoords="offset points",
                    xytext=(0, -14),
                    ha="center",
                    fontsize=8,
                )
        p99 = [(r["tick_to_stored_ms"]["p99"] or 0) / 1000 for r in group]
        right.plot(meters, p99, "o-", color=color, label=label)
        ceilings = [(r["config"]["meters"], r.get("ceiling_meter_reads_per_s")) for r in group]
        ceilings = [(m, c) for m, c in ceilings if c]
        if ceilings:
            left.plot(
                *zip(*ceilings, strict=True),
                "x:",
                color=color,
                alpha=0.6,
                label=f"ceiling ({label})",
            )
    if len(periods) == 1:
        period = periods.pop()
        left.plot(
            meters_all,
            [m / period for m in meters_all],
            "--",
            color="grey",
            label=f"offered (meters / {period:g} s)",
        )
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("meters (SDM630)")
    left.set_ylabel("meter reads stored per second")
    left.set_title("Stored throughput")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    right.axhline(P99_TARGET_S, color="red", linestyle="--", label="target p99 1.5 s")
    right.set_xscale("log")
    right.set_xlabel("meters (SDM630)")
    right.set_ylabel("p99 tick → stored (s)")
    right.set_title("Latency, tick to written in InfluxDB")
    right.grid(True, which="both", alpha=0.3)
    right.legend(fontsize=8)
    durations = sorted({r["config"]["window_s"] for r in runs})
    fig.suptitle(
        f"Pipeline on {runs[0]['machine']['nproc']} cores ({runs[0]['machine']['cpu']}), "
        f"measured windows of {', '.join(f'{d:g}' for d in durations)} s",
        fontsize=10,
    )
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.plot", description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    plot(args.out, [json.loads(p.read_text()) for p in args.runs])


if __name__ == "__main__":
    main()
