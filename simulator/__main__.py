"""`emm simulator` / `python -m simulator`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emm.errors import ConfigError, EmmError
from emm.log import setup_logging
from emm.metrics import serve
from emm.service import run_until_signalled
from emm.settings import SimulatorSettings
from simulator.app import STATS_EVERY_S, SimulatorOptions, run
from simulator.faults import Fault, Scenario, load_scenario, parse_fault, parse_meters
from simulator.fleet import MAX_UNITS_PER_PORT
from simulator.model import VIRTUAL_TYPE, resolve_profile


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
        type=int,
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
        type=int,
        default=MAX_UNITS_PER_PORT,
        metavar="N",
        help=f"meters per port in gateway mode (default {MAX_UNITS_PER_PORT})",
    )
    meters.add_argument(
        "--max-connections",
        type=int,
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
    meters.add_argument("--host", help="address to listen on (EMM_SIMULATOR_HOST)")
    meters.add_argument("--port", type=int, help="(first) port (EMM_SIMULATOR_PORT); 0: any free")


def _fault_arguments(faults: argparse._ArgumentGroup) -> None:
    """Faults given as flags (a scenario file gives them per meter)."""
    faults.add_argument("--scenario", metavar="FILE", help="faults from a TOML or JSON file")
    faults.add_argument("--fault-meters", metavar="SPEC", help='meter indexes, e.g. "0-9,12"')
    faults.add_argument(
        "--latency-ms", type=float, default=0.0, metavar="MS", help="answer this much later"
    )
    faults.add_argument(
        "--jitter-ms", type=float, default=0.0, metavar="MS", help="plus up to this much, at random"
    )
    faults.add_argument(
        "--exception",
        action="append",
        default=[],
        metavar="CODE[@RATE]",
        help="answer reads with this Modbus exception (at this rate, default 1)",
    )
    faults.add_argument(
        "--timeout-rate",
        type=float,
        default=0.0,
        metavar="RATE",
        help="fraction of requests never answered",
    )
    faults.add_argument(
        "--reset-rate",
        type=float,
        default=0.0,
        metavar="RATE",
        help="fraction of requests answered by resetting the connection",
    )
    faults.add_argument(
        "--reboot",
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
        help="register the meters in PostgreSQL (EMM_POSTGRES_DSN) as rows "
        "described sim-<index>, then serve",
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
        parts = args.reboot.split(":")
        if len(parts) not in (2, 3):
            raise ConfigError(f"--reboot {args.reboot!r}: expected AFTER:FOR or AFTER:FOR:EVERY")
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
    )
    if args.max_connections < 0:
        raise ConfigError(f"--max-connections {args.max_connections}: must be 0 or more")
    return settings, options


def main(argv: list[str] | None = None) -> None:
    """Run the service with settings from the environment and options from `argv`."""
    try:
        settings, options = build(argv)
    except EmmError as exc:
        print(f"emm simulator: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    setup_logging(settings.log_level, "simulator", settings.log_format)
    serve(settings.metrics_port)
    try:
        run_until_signalled(
            lambda stop: run(settings, stop, options), event_loop=settings.event_loop
        )
    except EmmError as exc:
        print(f"emm simulator: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
