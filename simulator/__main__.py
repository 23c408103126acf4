"""`emm simulator` / `python -m simulator`."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

from emm import metrics
from emm.errors import ConfigError, EmmError
from emm.log import setup_logging
from emm.registers import Order
from emm.service import exit_code, run_until_signalled
from emm.settings import SimulatorSettings
from simulator.app import STATS_EVERY_S, SimulatorOptions, run
from simulator.faults import Fault, Scenario, load_scenario, parse_fault, parse_meters
from simulator.fleet import MAX_UNITS_PER_PORT
from simulator.model import VIRTUAL_TYPE, resolve_profile


def _whole(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argument type: a whole number from `low` (to `high`)."""
    allowed = f"from {low} to {high}" if high is not None else f"at least {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be a whole number {allowed}, got {text!r}")
        return value

    return parse


def _number(low: float, high: float | None = None) -> Callable[[str], float]:
    """An argument type: a finite number from `low` (to `high`)."""
    allowed = f"from {low:g} to {high:g}" if high is not None else f"at least {low:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value >= low and (high is None or value <= high)):
            raise argparse.ArgumentTypeError(f"must be a number {allowed}, got {text!r}")
        return value

    return parse


def _part(name: str, parse: Callable[[str], float], text: str) -> None:
    """Check one part of a compound flag value, naming the part."""
    try:
        parse(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{name} {exc}") from None


def _meter_spec(text: str) -> str:
    """An argument type: meter indexes such as "0-9,12" (kept as text)."""
    try:
        parse_meters(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _exception_spec(text: str) -> str:
    """An argument type: CODE[@RATE] (kept as text)."""
    code, at, rate = text.partition("@")
    _part("CODE", _whole(1, 255), code)
    if at:
        _part("RATE", _number(0, 1), rate)
    return text


def _reboot_spec(text: str) -> str:
    """An argument type: AFTER:FOR[:EVERY] seconds (kept as text)."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"expected AFTER:FOR or AFTER:FOR:EVERY, got {text!r}")
    for name, part in zip(("AFTER", "FOR", "EVERY"), parts, strict=False):
        _part(name, _number(0), part)
    return text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emm simulator",
        description=(
            "Serve virtual meters over Modbus TCP. Without options: the original virtual meter "
            "(holding register 0) on every unit id. Settings come from EMM_* environment "
            "variables (EMM_SIMULATOR_HOST, EMM_SIMULATOR_PORT, EMM_SIMULATOR_STEP_S); the "
            "options below override them."
        ),
    )
    _meter_arguments(parser.add_argument_group("meters"))
    _fault_arguments(
        parser.add_argument_group(
            "faults", "each applies to --fault-meters (default every meter); see also --scenario"
        )
    )
    _config_arguments(parser.add_argument_group("configuration"))
    return parser


def _meter_arguments(meters: argparse._ArgumentGroup) -> None:
    """What is served, and where."""
    meters.add_argument(
        "--profile",
        default=VIRTUAL_TYPE,
        metavar="TYPE",
        help="a shipped profile type (sdm630, ...) or a profile .toml file "
        f"(default: {VIRTUAL_TYPE})",
    )
    meters.add_argument(
        "--meters",
        type=_whole(1),
        metavar="N",
        help="serve N meters with seeds 0..N-1: unit ids 1..247 per port "
        "(gateway mode), then the next port",
    )
    meters.add_argument(
        "--port-per-meter",
        action="store_true",
        help="give each meter its own port (consecutive from --port), answering any unit id",
    )
    meters.add_argument(
        "--units-per-port",
        type=_whole(1, MAX_UNITS_PER_PORT),
        default=MAX_UNITS_PER_PORT,
        metavar="N",
        help=f"meters per port in gateway mode (default {MAX_UNITS_PER_PORT})",
    )
    meters.add_argument(
        "--max-connections",
        type=_whole(0),
        default=0,
        metavar="N",
        help="accept at most N connections per port at once, as a gateway does: one more is "
        "closed at once and counted (default 0: any number)",
    )
    meters.add_argument(
        "--framing",
        choices=("tcp", "rtu"),
        default="tcp",
        help="tcp: Modbus TCP (MBAP); rtu: Modbus RTU frames over TCP, as a transparent "
        "RS485 gateway passes them (default tcp)",
    )
    meters.add_argument(
        "--stats-file",
        metavar="FILE",
        help="write the counters (reads, connections refused, most connections open at once "
        f"per port) to FILE as JSON every {STATS_EVERY_S:g} s and at shutdown",
    )
    meters.add_argument(
        "--serve-order",
        choices=("ABCD", "CDAB", "BADC", "DCBA"),
        help="serve every multi-register value in this byte/word order instead of the "
        "profile's, as a device configured otherwise does (to try `emm probe`)",
    )
    meters.add_argument(
        "--serve-shift",
        type=_whole(-10, 10),
        default=0,
        metavar="N",
        help="serve every register N addresses later (-1: earlier) than the profile says, as a "
        "device numbering its registers from 1 does (default 0)",
    )
    meters.add_argument(
        "--host", help="address to listen on (EMM_SIMULATOR_HOST; default 127.0.0.1)"
    )
    meters.add_argument(
        "--port", type=_whole(0, 65535), help="(first) port (EMM_SIMULATOR_PORT); 0: any free"
    )


def _fault_arguments(faults: argparse._ArgumentGroup) -> None:
    """Faults given as flags (a scenario file gives them per meter)."""
    faults.add_argument("--scenario", metavar="FILE", help="faults from a TOML or JSON file")
    faults.add_argument(
        "--fault-meters", type=_meter_spec, metavar="SPEC", help='meter indexes, e.g. "0-9,12"'
    )
    faults.add_argument(
        "--latency-ms", type=_number(0), default=0.0, metavar="MS", help="answer this much later"
    )
    faults.add_argument(
        "--jitter-ms",
        type=_number(0),
        default=0.0,
        metavar="MS",
        help="plus up to this much, at random",
    )
    faults.add_argument(
        "--exception",
        type=_exception_spec,
        action="append",
        default=[],
        metavar="CODE[@RATE]",
        help="answer reads with this Modbus exception (at this rate, default 1)",
    )
    faults.add_argument(
        "--timeout-rate",
        type=_number(0, 1),
        default=0.0,
        metavar="RATE",
        help="fraction of requests never answered",
    )
    faults.add_argument(
        "--reset-rate",
        type=_number(0, 1),
        default=0.0,
        metavar="RATE",
        help="fraction of requests answered by resetting the connection",
    )
    faults.add_argument(
        "--reboot",
        type=_reboot_spec,
        metavar="AFTER:FOR[:EVERY]",
        help="refuse connections for FOR s starting AFTER s after start (repeating every EVERY s)",
    )
    faults.add_argument(
        "--reboot-resets-energy",
        action="store_true",
        help="energy counters restart from zero after each reboot",
    )
    faults.add_argument(
        "--hole",
        action="append",
        default=[],
        metavar="[FC:]START[-END]",
        help="addresses that answer exception 2",
    )


def _config_arguments(config: argparse._ArgumentGroup) -> None:
    """Registering the meters in PostgreSQL."""
    config.add_argument(
        "--write-config",
        action="store_true",
        help="register the meters in PostgreSQL (EMM_POSTGRES_DSN), one row per address "
        "(host:port, unit id) described sim-<index>, then serve",
    )
    config.add_argument(
        "--advertise-host",
        default="127.0.0.1",
        metavar="HOST",
        help="host the meters are reached at, for --write-config (default 127.0.0.1)",
    )


def _flag_faults(args: argparse.Namespace) -> Scenario:
    """The faults given as flags."""
    meters = parse_meters(args.fault_meters)
    faults: list[Fault] = []
    if args.latency_ms or args.jitter_ms:
        faults.append(Fault("latency", meters, fixed_ms=args.latency_ms, jitter_ms=args.jitter_ms))
    if args.timeout_rate:
        faults.append(Fault("timeout", meters, rate=args.timeout_rate))
    if args.reset_rate:
        faults.append(Fault("reset", meters, rate=args.reset_rate))
    for text in args.exception:
        code, _, rate = text.partition("@")
        faults.append(
            parse_fault(
                {
                    "kind": "exception",
                    "meters": args.fault_meters,
                    "code": code,
                    "rate": rate or 1.0,
                },
                f"--exception {text}",
            )
        )
    if args.reboot:
        parts = args.reboot.split(":")  # checked by _reboot_spec
        data = {
            "kind": "reboot",
            "meters": args.fault_meters,
            "after_s": parts[0],
            "for_s": parts[1],
            "reset_energy": args.reboot_resets_energy,
        }
        if len(parts) == 3:
            data["every_s"] = parts[2]
        faults.append(parse_fault(data, f"--reboot {args.reboot}"))
    for text in args.hole:
        fc, _, addresses = text.rpartition(":")
        data = {"kind": "hole", "meters": args.fault_meters, "addresses": [addresses]}
        if fc:
            data["function_code"] = fc
        faults.append(parse_fault(data, f"--hole {text}"))
    return Scenario(tuple(faults))


def build(argv: list[str] | None) -> tuple[SimulatorSettings, SimulatorOptions]:
    """Settings (environment, overridden by options) and what to simulate; raises EmmError."""
    args = _parser().parse_args(argv)
    settings = SimulatorSettings.from_env()
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = settings.model_copy(update=overrides)
    scenario = load_scenario(args.scenario) if args.scenario else Scenario()
    options = SimulatorOptions(
        meters=args.meters,
        profile=resolve_profile(args.profile),
        port_per_meter=args.port_per_meter,
        units_per_port=args.units_per_port,
        scenario=scenario + _flag_faults(args),
        write_config=args.write_config,
        advertise_host=args.advertise_host,
        max_connections=args.max_connections,
        framing=args.framing,
        stats_file=Path(args.stats_file) if args.stats_file else None,
        serve_order=None if args.serve_order is None else Order(args.serve_order),
        serve_shift=args.serve_shift,
    )
    return settings, options


def main(argv: list[str] | None = None) -> None:
    """Run the service with settings from the environment and options from `argv`."""
    try:
        settings, options = build(argv)
    except EmmError as exc:
        print(f"emm simulator: {exc}", file=sys.stderr)
        raise SystemExit(exit_code(exc)) from None
    setup_logging(settings.log_level, "simulator", settings.log_format)
    metrics.serve(settings.metrics_port)
    try:
        run_until_signalled(
            lambda stop: run(settings, stop, options), event_loop=settings.event_loop
        )
    except EmmError as exc:
        print(f"emm simulator: {exc}", file=sys.stderr)
        raise SystemExit(exit_code(exc)) from None


if __name__ == "__main__":
    main()
