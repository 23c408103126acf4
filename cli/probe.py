"""`emm probe`: tell, from the wire, which register map and layout a device speaks.

SunSpec first: the "SunS" marker is looked for at 40000, 0 and 50000; when found, the model
chain is walked to its end model and the models this build knows become a concrete register
map (`emm.sunspec`), named after the maker and model of its common model; `--write` stores it
as a type and adds the meter. Otherwise every shipped profile is tried in the four byte/word
orders and with its addresses moved by -1, 0 and +1: each profile's address span is read once
per offset (words read for one profile serve every other that covers them) and decoded four
ways; every candidate is scored for plausibility (`score`) and the best is shown with its
evidence and the runner-up.

Only read function codes are sent (the system never writes to a device), through the
worker's own connections (`worker.modbus`: its framing, timeouts and pacing), and never more
than `--budget` requests, so a gateway is not flooded.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from cli.args import DEFAULT_PORT
from emm.codec import RequestDecoder
from emm.errors import ConfigError, DeviceError, EmmError
from emm.log import setup_logging
from emm.messages import Gateway
from emm.modbus import MAX_REGISTERS_PER_READ
from emm.planner import ReadLimits, ReadRequest, assign
from emm.planner import plan as plan_requests
from emm.profiles import Profile, ProfileRegister, shipped_profiles
from emm.registers import Order, Register
from emm.sunspec import BASES, COMMON, END_MODEL, MARKER, MAX_MODELS, ModelBlock, register_map
from emm.sunspec import type_name as sunspec_type_name
from worker.modbus import GatewayLinks

DEFAULT_BUDGET = 300
OFFSETS = (0, -1, 1)
ORDERS = (Order.ABCD, Order.CDAB, Order.BADC, Order.DCBA)
# exception codes a gateway answers for a unit id nothing answers behind it
_NOBODY = frozenset({10, 11})
# a second read of the best candidates, for their counters to grow
SECOND_READ_AFTER_S = 1.5


class BudgetSpent(EmmError):
    """The request budget is spent."""


class Wire:
    """Reads from one unit over the worker's connections, counting requests against the budget
    and remembering every word read (a later read of known words costs nothing)."""

    def __init__(self, links: GatewayLinks, unit_id: int, budget: int, timeout_s: float) -> None:
        self.links = links
        self.unit_id = unit_id
        self.budget = budget
        self.timeout_s = timeout_s
        self.sent = 0
        self.words: dict[tuple[int, int], int] = {}
        self.refused: set[tuple[int, int, int]] = set()

    async def read(self, request: ReadRequest, *, fresh: bool = False) -> list[int] | None:
        """The words of `request`, or None when the device refused or did not answer."""
        fc, address, count = request.function_code, request.address, request.count
        keys = [(fc, a) for a in range(address, address + count)]
        if not fresh and all(k in self.words for k in keys):
            return [self.words[k] for k in keys]
        if (fc, address, count) in self.refused and not fresh:
            return None
        if self.sent >= self.budget:
            raise BudgetSpent(f"the budget of {self.budget} requests is spent")
        self.sent += 1
        try:
            async with self.links.acquire() as link:
                words = await link.read(fc, address, count, self.unit_id, timeout_s=self.timeout_s)
        except DeviceError:
            self.refused.add((fc, address, count))
            return None
        self.words.update(zip(keys, words, strict=True))
        return words


# ---- SunSpec


@dataclass
class SunSpecDevice:
    """What a SunSpec device said about itself."""

    base: int
    chain: list[ModelBlock]
    maker: str = ""
    model: str = ""
    serial: str = ""

    @property
    def type(self) -> str:
        return sunspec_type_name(self.maker, self.model)


async def find_sunspec(wire: Wire) -> SunSpecDevice | None:
    """The device's SunSpec chain, when it has the marker at one of `BASES`."""
    for base in BASES:
        words = await wire.read(ReadRequest(3, base, 2))
        if words is None or tuple(words) != MARKER:
            continue
        chain: list[ModelBlock] = []
        address = base + 2
        while len(chain) < MAX_MODELS:
            header = await wire.read(ReadRequest(3, address, 2))
            if header is None or header[0] == END_MODEL:
                break
            chain.append(ModelBlock(header[0], address, header[1]))
            address = chain[-1].after
        device = SunSpecDevice(base, chain)
        await _identify(wire, device)
        return device
    return None


async def _identify(wire: Wire, device: SunSpecDevice) -> None:
    """Read the first common model's maker, model and serial number."""
    common = next((b for b in device.chain if b.model_id == COMMON), None)
    if common is None:
        return
    rows = [r for r, _ in register_map([common])]
    start, end = min(r.address for r in rows), max(r.end for r in rows)
    words = await wire.read(ReadRequest(3, start, end - start))
    if words is None:
        return
    text, _missing = RequestDecoder.build(start, end - start, tuple(rows)).decode_text(words)
    device.maker = text.get("maker", "")
    device.model = text.get("model", "")
    device.serial = text.get("serial", "")


def sunspec_profile(device: SunSpecDevice) -> Profile:
    """The concrete register map of a device's known models, as a profile of its type."""
    source = f"SunSpec model chain read from the device (SunS at {device.base})"
    rows = tuple(ProfileRegister(r, s) for r, s in register_map(device.chain))
    if not rows:
        raise ConfigError(
            "the device's SunSpec models ("
            + ", ".join(str(b.model_id) for b in device.chain)
            + ") are none this build knows"
        )
    return Profile(
        type=device.type,
        name=f"{device.maker} {device.model}".strip() or device.type,
        source=source,
        limits=ReadLimits(max_registers=MAX_REGISTERS_PER_READ, max_gap=10),
        rows=rows,
        path="emm probe",
    )


# ---- plausibility


@dataclass
class Candidate:
    """One profile read in one order at one address offset, and how plausible it looks."""

    profile: Profile
    order: Order
    offset: int
    values: dict[str, float] = field(default_factory=dict)
    unread: int = 0
    score: float = 0.0
    evidence: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.profile.type}, order {self.order.value}, offset {self.offset:+d}"


def layout(registers: Iterable[Register], order: Order, offset: int) -> tuple[Register, ...]:
    """The registers as a device in `order` (multi-register values) at `offset` serves them."""
    out = []
    for reg in registers:
        changed = order if reg.words > 1 and not reg.is_text else reg.order
        if reg.address + offset < 0 or reg.end + offset > 65536:
            continue
        out.append(replace(reg, address=reg.address + offset, order=changed))
    return tuple(out)


_PHASES = ("L1", "L2", "L3")


def score(
    values: dict[str, float], registers: Sequence[Register], unread: int
) -> tuple[float, list[str]]:
    """How plausible decoded values are for an electricity meter: (points, evidence).

    Phase voltages 100-130 or 207-253 V and alike across phases, line voltages 180-260 or
    360-440 V, frequency 45-65 Hz, |PF| <= 1, P close to V*I*PF per phase, counters not
    negative; absurd magnitudes (what a wrong word order makes of a float) and registers the
    device refused count against.
    """
    points, evidence = 0.0, []
    units = {r.name: r.unit for r in registers}

    def judge(ok: bool, gain: float, loss: float, text: str) -> None:
        nonlocal points
        points += gain if ok else -loss
        if ok:
            evidence.append(text)

    phase_v = [values[f"voltage{p}"] for p in _PHASES if f"voltage{p}" in values]
    for p in _PHASES:
        v = values.get(f"voltage{p}")
        if v is not None:
            judge(100 <= v <= 130 or 207 <= v <= 253, 1, 1, f"voltage{p} {v:g} V")
    if len(phase_v) == 3:
        mean = sum(phase_v) / 3
        judge(mean > 0 and max(phase_v) - min(phase_v) < 0.1 * mean, 2, 1, "phase voltages alike")
    for a, b in (("L1", "L2"), ("L2", "L3"), ("L3", "L1")):
        v = values.get(f"voltage{a}{b}")
        if v is not None:
            judge(180 <= v <= 260 or 360 <= v <= 440, 1, 1, f"voltage{a}{b} {v:g} V")
    hz = values.get("frequency")
    if hz is not None:
        judge(45 <= hz <= 65, 2, 2, f"frequency {hz:g} Hz")
    for name, value in values.items():
        if name.lower().startswith(("powerfactor", "totalpowerfactor", "cosphi")):
            judge(abs(value) <= 1, 0.5, 1, "")
        if units.get(name, "").lower() in ("wh", "kwh", "mwh", "varh", "kvarh", "vah", "kvah"):
            judge(value >= 0, 0.25, 1, "")
        if not math.isfinite(value) or abs(value) > 1e9 or 0 < abs(value) < 1e-9:
            points -= 1
    for p in _PHASES:
        _power_check(values, p, judge)
    points -= 0.5 * unread
    return points, [e for e in evidence if e]


def _power_check(
    values: dict[str, float], phase: str, judge: Callable[[bool, float, float, str], None]
) -> None:
    """P = V * I * PF on one phase, within 10 % (or 20 W)."""
    names = (f"activePower{phase}", f"voltage{phase}", f"current{phase}", f"powerFactor{phase}")
    if not all(n in values for n in names):
        return
    p, v, i, pf = (values[n] for n in names)
    expected = v * i * pf
    ok = abs(abs(p) - abs(expected)) <= max(20.0, 0.1 * abs(expected))
    judge(ok, 2, 1, f"P≈V·I·PF on {phase} ({p:.0f} W vs {expected:.0f} W)")


async def read_candidate(
    wire: Wire, profile: Profile, offset: int, *, fresh: bool = False
) -> dict[Order, Candidate]:
    """The profile at `offset` read once and decoded in each order."""
    base = layout(profile.registers, Order.ABCD, offset)
    numeric = tuple(r for r in base if not r.is_text)
    requests = plan_requests(numeric, profile.limits)
    words: dict[ReadRequest, list[int] | None] = {}
    for request in requests:
        words[request] = await wire.read(request, fresh=fresh)
    out = {}
    for order in ORDERS:
        regs = layout(profile.registers, order, offset)
        regs = tuple(r for r in regs if not r.is_text)
        candidate = Candidate(profile, order, offset)
        for request, covered in assign(requests, regs):
            got = words[request]
            if got is None:
                candidate.unread += len(covered)
                continue
            values, _missing = RequestDecoder.build(request.address, request.count, covered).decode(
                got
            )
            candidate.values.update(values)
        candidate.score, candidate.evidence = score(candidate.values, regs, candidate.unread)
        out[order] = candidate
    return out


def counters_grow(first: Candidate, second: Candidate) -> tuple[float, str]:
    """Points for counters that did not go down between two reads (and grew)."""
    counters = [r.name for r in first.profile.registers if r.is_counter]
    shared = [n for n in counters if n in first.values and n in second.values]
    if not shared:
        return 0.0, ""
    down = [n for n in shared if second.values[n] < first.values[n]]
    grew = [n for n in shared if second.values[n] > first.values[n]]
    if down:
        return -2.0 * len(down), ""
    return 1.0 + 0.1 * len(grew), f"counters not going down ({len(grew)} of {len(shared)} grew)"


async def identify(wire: Wire, profiles: Sequence[Profile]) -> tuple[list[Candidate], bool]:
    """Every candidate, best first, and whether the budget ran out before all were read."""
    candidates: list[Candidate] = []
    spent = False
    for profile in profiles:
        for offset in OFFSETS:
            try:
                candidates += (await read_candidate(wire, profile, offset)).values()
            except BudgetSpent:
                spent = True
                break
        if spent:
            break
    candidates.sort(key=lambda c: -c.score)
    await asyncio.sleep(SECOND_READ_AFTER_S)
    for best in _distinct(candidates)[:2]:
        try:
            again = (await read_candidate(wire, best.profile, best.offset, fresh=True))[best.order]
        except BudgetSpent:
            spent = True
            break
        gain, text = counters_grow(best, again)
        best.score += gain
        if text:
            best.evidence.append(text)
    candidates.sort(key=lambda c: -c.score)
    return candidates, spent


def _distinct(candidates: list[Candidate]) -> list[Candidate]:
    """The best candidate of each (profile, offset), best first."""
    seen: set[tuple[str, int]] = set()
    out = []
    for c in candidates:
        if (c.profile.type, c.offset) not in seen:
            seen.add((c.profile.type, c.offset))
            out.append(c)
    return out


# ---- the command


def parse_units(text: str) -> list[int]:
    """`--scan`'s range "A-B" (or one id) as the unit ids, within 0..255."""
    low, _, high = text.partition("-")
    try:
        first, last = int(low), int(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected A-B such as 1-247, got {text!r}") from None
    if not 0 <= first <= last <= 255:
        raise argparse.ArgumentTypeError(f"must lie within 0-255 with A <= B, got {text!r}")
    return list(range(first, last + 1))


async def scan(links: GatewayLinks, units: list[int], timeout_s: float) -> list[int]:
    """The unit ids that answer a read (with data or an exception of their own)."""
    answering = []
    for unit in units:
        try:
            async with links.acquire() as link:
                await link.read(3, BASES[0], 2, unit, timeout_s=timeout_s)
        except DeviceError as exc:
            code = getattr(exc, "exception_code", 0)
            if not code or code in _NOBODY:
                continue
        answering.append(unit)
    return answering


def run(args: argparse.Namespace) -> int:
    """Identify the device (or list the unit ids that answer); exit 1 when nothing fits."""
    setup_logging("WARNING", "probe")
    host, port = args.host
    if port is not None and args.port is not None and port != args.port:
        raise ConfigError(f"--host gives port {port} and --port {args.port}: give one")
    port = port or args.port or DEFAULT_PORT
    return asyncio.run(_run(args, host, port))


async def _run(args: argparse.Namespace, host: str, port: int) -> int:
    links = GatewayLinks(
        host,
        port,
        timeout_s=args.timeout,
        connect_timeout_s=args.timeout,
        settings=Gateway(framing=args.framing),
    )
    try:
        if args.scan is not None:
            found = await scan(links, args.scan, args.timeout)
            print("unit ids that answer: " + (", ".join(map(str, found)) or "none"))
            return 0 if found else 1
        wire = Wire(links, args.unit, args.budget, args.timeout)
        device = await find_sunspec(wire)
        if device is not None:
            return _report_sunspec(args, host, port, device, wire)
        profiles = [p for p in shipped_profiles() if p.sunspec is None]
        candidates, spent = await identify(wire, profiles)
        return _report_candidates(candidates, spent, wire)
    finally:
        links.close()


def _report_sunspec(
    args: argparse.Namespace, host: str, port: int, device: SunSpecDevice, wire: Wire
) -> int:
    models = ", ".join(f"{b.model_id}@{b.address}" for b in device.chain)
    print(f"SunSpec device: SunS at {device.base}; models {models}")
    print(f"maker {device.maker!r}, model {device.model!r}, serial {device.serial!r}")
    profile = sunspec_profile(device)
    print(f"register map: {len(profile.rows)} registers as type {profile.type!r}")
    print(f"{wire.sent} request(s)", file=sys.stderr)
    if args.write:
        _write(profile, host, port, args.unit, device)
    return 0


def _write(profile: Profile, host: str, port: int, unit: int, device: SunSpecDevice) -> None:
    """Store the map as its type and add (or update) the meter."""
    from emm.settings import MigrateSettings
    from postgres.connection import connect
    from postgres.meters import MeterRow, upsert_meters
    from postgres.profiles import import_profile

    description = " ".join(x for x in (device.maker, device.model, device.serial) if x)
    with connect(MigrateSettings.from_env().postgres_dsn) as conn:
        import_profile(conn, profile, replace=True)
        result = upsert_meters(
            conn, profile.type, [MeterRow(description or profile.type, host, port, unit)]
        )
    print(
        f"stored type {profile.type!r} ({len(profile.rows)} registers); meter "
        + ("added" if result.added else "updated" if result.updated else "unchanged")
    )


def _report_candidates(candidates: list[Candidate], spent: bool, wire: Wire) -> int:
    note = " (the request budget ran out: not every profile was tried)" if spent else ""
    print(f"{wire.sent} request(s){note}", file=sys.stderr)
    if not candidates or candidates[0].score <= 0:
        print("no shipped profile fits this device")
        return 1
    best = candidates[0]
    print(f"best: {best.label} (score {best.score:.1f})")
    for line in best.evidence[:8]:
        print(f"  {line}")
    runner = next((c for c in candidates[1:] if c is not best), None)
    if runner is not None:
        print(f"runner-up: {runner.label} (score {runner.score:.1f})")
    return 0
