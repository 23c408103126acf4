"""Messages between the services: a `Job` (scheduler -> worker), a `TickMarker` (scheduler ->
whichever worker owns a shard of the jobs), a `Reading` and a `GatewayStatus` (worker -> writer,
both on `emm.readings`; `decode_result` tells them apart).

Both are msgspec Structs encoded as JSON with a schema version `v` and a `kind`. Decoding a
body that is not a valid message raises MessageError with the raw bytes attached, so the caller can
dead-letter exactly what it received.

Jobs are version 3: the meter and tick, then the `plan_id` and the `plan` of the meter's type
(`emm.plan`), shared by the meters of a type due alike. A worker parses and validates a plan the
first time it sees its id and then only reads the head of each job. Version 2 jobs (the plan's
`requests` and `registers` at the top level, registers as rows) and version 1 jobs (registers as
objects) are still read, their plans cached by a hash of their bytes (a worker may read only
those while the scheduler is older than it).

A reading's `text` (the values of text registers) is optional: readings without it are read
alike, and a writer older than it ignores the key.

A version 3 job may also carry its meter's `gateway` settings (`Gateway`); only the settings
that differ from the defaults are written, and a job without the key has the defaults, so jobs
of either kind are read by workers of either build. Likewise its meter's `plausibility` limits
(`emm.plausibility`): only those that differ from the defaults, the key absent when all do.

A reading may carry a `guard` (the worker copies its job's limits and its plan's field roles):
what the writer checks it against. A reading without one (from an older worker) is stored
unchecked; an older writer skips the key. Both stay version 1.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any, Literal, NoReturn

import msgspec
from msgspec.structs import force_setattr

from emm.budget import utilisation
from emm.errors import ConfigError, MessageError
from emm.plan import Plan, PlanCache
from emm.planner import ReadRequest
from emm.plausibility import DEFAULT_PLAUSIBILITY, Guard, Plausibility
from emm.registers import Register

JOB_VERSION = 3
JOB_VERSIONS_READ = (1, 2, 3)
READING_VERSION = 1
GATEWAY_STATUS_VERSION = 1
MARKER_VERSION = 1

Framing = Literal["tcp", "rtu-over-tcp"]
FRAMINGS: tuple[Framing, ...] = ("tcp", "rtu-over-tcp")


class Meter(msgspec.Struct, frozen=True):
    """A device to read and the tags its points carry."""

    id: int
    host: str
    port: int
    unit_id: int
    type: str
    description: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"meter {self.id}: port {self.port} is outside 1..65535")
        if not 0 <= self.unit_id <= 255:
            raise ConfigError(f"meter {self.id}: unit id {self.unit_id} is outside 0..255")
        if not self.host:
            raise ConfigError(f"meter {self.id}: host is empty")

    def tags(self) -> dict[str, str]:
        """The InfluxDB tags of this meter's points (description only when set)."""
        tags = {"meter_id": str(self.id), "type": self.type}
        if self.description:
            tags["description"] = self.description
        return tags

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Meter:
        """A meter from an `energy_meters` row (as the load query shapes it)."""
        return cls(
            id=int(data["id"]),
            host=str(data["host"]),
            port=int(data["port"]),
            unit_id=int(data["unit_id"]),
            type=str(data["type"]),
            description=data.get("description"),
        )


class Gateway(msgspec.Struct, frozen=True, omit_defaults=True):
    """How a gateway (a host:port) is treated: a `gateways` row, the defaults for a meter
    without one. Ranges are those of the table's CHECK constraints."""

    max_connections: int = 1
    pause_between_requests_ms: int = 0
    pause_after_connect_ms: int = 0
    request_timeout_ms: int | None = None  # None: the worker's EMM_READ_TIMEOUT_S
    max_read_registers: int | None = None  # None: the meter type's
    framing: Framing = "tcp"

    def __post_init__(self) -> None:
        for name, low, high in _GATEWAY_RANGES:
            value = getattr(self, name)
            if value is not None and not low <= value <= high:
                raise ConfigError(f"{name} {value} is outside {low}..{high}")
        if self.framing not in FRAMINGS:
            raise ConfigError(f"framing {self.framing!r} is not one of {', '.join(FRAMINGS)}")
        # msgspec leaves out a default by identity: a framing read from a row must be ours
        force_setattr(self, "framing", FRAMINGS[FRAMINGS.index(self.framing)])

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Gateway:
        """The settings of a `gateways` row (as the load query shapes it); a NULL is the
        default."""
        given = {name: data[name] for name in cls.__struct_fields__ if data.get(name) is not None}
        return cls(**given)

    def timeout_s(self, default_s: float) -> float:
        """The seconds to wait for one answer: this gateway's own, else `default_s`."""
        return default_s if self.request_timeout_ms is None else self.request_timeout_ms / 1000


# (field, lowest, highest): as the `gateways` table's CHECK constraints say
_GATEWAY_RANGES = (
    ("max_connections", 1, 16),
    ("pause_between_requests_ms", 0, 10_000),
    ("pause_after_connect_ms", 0, 10_000),
    ("request_timeout_ms", 10, 60_000),
    ("max_read_registers", 1, 125),
)
DEFAULT_GATEWAY = Gateway()


class Job(msgspec.Struct, frozen=True):
    """Read one meter for one tick: everything the worker needs, nothing it must look up."""

    meter: Meter
    tick_ms: int
    deadline_ms: int
    plan: Plan
    gateway: Gateway = DEFAULT_GATEWAY
    plausibility: Plausibility = DEFAULT_PLAUSIBILITY

    @property
    def guard(self) -> Guard:
        """What this job's reading is to be checked against by the writer."""
        return Guard(self.plausibility, self.plan.roles)

    @property
    def period_ms(self) -> int:
        """The tick's period: from the tick to the next."""
        return self.deadline_ms - self.tick_ms

    @property
    def job_id(self) -> str:
        return f"{self.meter.id}@{self.tick_ms}"

    def encode(self) -> bytes:
        """The job as version 3 JSON (the plan's bytes are the plan's own, encoded once)."""
        return _ENCODER.encode(
            _JobWire(
                JOB_VERSION,
                "job",
                self.meter,
                self.tick_ms,
                self.deadline_ms,
                self.plan.plan_id,
                msgspec.Raw(self.plan.encoded),
                # msgspec leaves out a default by identity; an equal one is the default too
                gateway=DEFAULT_GATEWAY if self.gateway == DEFAULT_GATEWAY else self.gateway,
                plausibility=(
                    DEFAULT_PLAUSIBILITY
                    if self.plausibility == DEFAULT_PLAUSIBILITY
                    else self.plausibility
                ),
            )
        )

    @classmethod
    def decode(cls, body: bytes, plans: PlanCache | None = None) -> Job:
        """The job in `body` (any version read); MessageError (with `body`) when it is not one.

        Its plan comes from `plans` (this process's cache by default) when
        its id is known there; else it is parsed, checked against its id and added."""
        plans = _PLANS if plans is None else plans
        try:
            wire = _JOB_DECODER.decode(body)
        except (msgspec.DecodeError, ConfigError) as exc:
            _explain("job", body, JOB_VERSIONS_READ, exc)
        if wire.kind != "job" or wire.v not in JOB_VERSIONS_READ:
            _explain("job", body, JOB_VERSIONS_READ, None)
        read_plan = _plan if wire.v == JOB_VERSION else _older_plan
        return cls(
            wire.meter,
            wire.tick_ms,
            wire.deadline_ms,
            read_plan(wire, body, plans),
            wire.gateway,
            wire.plausibility,
        )


class _JobWire(msgspec.Struct, frozen=True, omit_defaults=True):
    """A job as any version spells it, the plan left unparsed until it is looked up."""

    v: int
    kind: str
    meter: Meter
    tick_ms: int
    deadline_ms: int
    # version 3 (an absent key reads as empty)
    plan_id: str = ""
    plan: msgspec.Raw = msgspec.Raw()
    # versions 1 and 2
    requests: msgspec.Raw = msgspec.Raw()
    registers: msgspec.Raw = msgspec.Raw()
    # version 3, when the gateway's settings are not all defaults
    gateway: Gateway = DEFAULT_GATEWAY
    # version 3, when the meter's plausibility limits are not all defaults
    plausibility: Plausibility = DEFAULT_PLAUSIBILITY


# the plans of the types this process has seen jobs of (a worker's only plan cache)
_PLANS = PlanCache()
# version 1 spelled two register keys otherwise
_V1_KEYS = {"fc": "function_code", "type": "data_type"}


def _plan(wire: _JobWire, body: bytes, plans: PlanCache) -> Plan:
    """The plan of a version 3 job: the known one of its id, or its own once checked."""
    for key, value in (("plan_id", wire.plan_id), ("plan", wire.plan)):
        if not value:
            raise MessageError(f"job lacks the key {key!r}", body)
    plan = plans.get(wire.plan_id)
    if plan is not None:
        return plan
    try:
        plan = Plan.decode(wire.plan)
    except msgspec.ValidationError as exc:
        _fail("job", body, _at(exc, "$.plan"))
    except ConfigError as exc:
        raise MessageError(f"job is malformed: {exc}", body) from None
    if plan.plan_id != wire.plan_id:
        raise MessageError(
            f"job is malformed: plan_id {wire.plan_id!r} is not the id of its plan "
            f"({plan.plan_id!r})",
            body,
        )
    plans.add(plan)
    return plan


def _older_plan(wire: _JobWire, body: bytes, plans: PlanCache) -> Plan:
    """The plan of a version 1 or 2 job (requests and registers at the top level).

    These carry no plan id: their plans are kept in `plans` under a hash of their bytes, as a
    worker may read only such jobs for as long as the scheduler is older than it.
    """
    for key, value in (("requests", wire.requests), ("registers", wire.registers)):
        if not value:
            raise MessageError(f"job lacks the key {key!r}", body)
    key = (
        "older:"
        + hashlib.blake2b(b"%b\n%b" % (wire.requests, wire.registers), digest_size=8).hexdigest()
    )
    plan = plans.get(key)
    if plan is not None:
        return plan
    try:
        requests = _OLDER_REQUESTS_DECODER.decode(wire.requests)
    except msgspec.ValidationError as exc:
        _fail("job", body, _at(exc, "$.requests"))
    try:
        registers = _OLDER_REGISTERS_DECODER.decode(wire.registers)
    except msgspec.ValidationError as exc:
        _fail("job", body, _at(exc, "$.registers"))
    try:
        plan = Plan.of((ReadRequest(*r) for r in requests), (_older_register(r) for r in registers))
    except ConfigError as exc:
        raise MessageError(f"job is malformed: {exc}", body) from None
    plans.add(plan, key)
    return plan


def _older_register(data: Any) -> Register:
    if isinstance(data, list):
        return Register.from_row(data)
    if isinstance(data, dict):
        mapping = dict(data)
        for old, new in _V1_KEYS.items():
            if old in mapping:
                mapping[new] = mapping.pop(old)
        return Register.from_mapping(mapping)
    raise ConfigError(f"register must be a list or an object, got {type(data).__name__}")


class Status(msgspec.Struct, frozen=True):
    """How the read of one meter went, stored in `meter_status`."""

    up: bool
    error_code: str = ""
    error: str = ""
    latency_ms: float = 0.0
    requests: int = 0


class Reading(msgspec.Struct, frozen=True):
    """The decoded values of one meter at one tick, with what could not be read."""

    meter: Meter
    tick_ms: int
    fields: dict[str, float]
    status: Status
    missing: tuple[str, ...] = ()
    errors: dict[str, str] = {}
    # fields that are cumulative counters (energy): they only grow unless the meter restarted
    counters: tuple[str, ...] = ()
    # text values (strings, enums' names, bitfields' set names), stored in `meter_info`; a
    # reading without the key (from a worker older than text registers) has none
    text: dict[str, str] = {}
    # what the writer checks the values against (None: not checked)
    guard: Guard | None = None

    @property
    def reading_id(self) -> str:
        return f"{self.meter.id}@{self.tick_ms}"

    def encode(self) -> bytes:
        """The reading as JSON; ValueError when a field is not a finite number."""
        # msgspec writes NaN and infinities as null; one sum finds them (or an overflow)
        if not math.isfinite(sum(self.fields.values())):
            for name, value in self.fields.items():
                if not math.isfinite(value):
                    raise ValueError(
                        f"Out of range float values are not JSON compliant: field {name!r} "
                        f"is {value!r}"
                    )
        # the version and kind go first, so a reader of the body sees them first
        body = _ENCODER.encode(self)
        if self.guard is None:  # the last key: left out, the body is what older builds wrote
            body = body[: -len(_NO_GUARD)] + b"}"
        if not self.text:  # likewise (the key before the guard)
            cut = body.rfind(_NO_TEXT)
            body = body[:cut] + body[cut + len(_NO_TEXT) :]
        return _READING_HEAD + body[1:]

    @classmethod
    def decode(cls, body: bytes) -> Reading:
        """The reading in `body`; MessageError (with `body`) when it is not one."""
        error: Exception | None = None
        try:
            head = _HEAD_DECODER.decode(body)
            if head.v == READING_VERSION and head.kind == "reading":
                return _READING_DECODER.decode(body)
        except (msgspec.DecodeError, ConfigError) as exc:
            error = exc
        _explain("reading", body, (READING_VERSION,), error)


class GatewayStatus(msgspec.Struct, frozen=True):
    """One gateway's load at one tick, as the worker that read it measured it; stored in
    `gateway_status`.

    `meters` were read through it, `requests` sent, `busy_ms` the time its connections were in
    use (pauses included, added up over its `connections`, the most it allows), `late` the jobs
    of its meters dropped as late (they reached the worker, or got the gateway, more than half
    a tick after the tick).
    """

    host: str
    port: int
    tick_ms: int
    period_ms: int
    connections: int = 1
    meters: int = 0
    requests: int = 0
    busy_ms: float = 0.0
    late: int = 0

    @property
    def name(self) -> str:
        """The `gateway` tag: host:port."""
        return f"{self.host}:{self.port}"

    @property
    def utilisation(self) -> float:
        """The share of the tick's period the gateway was busy (of `connections` periods, for
        a gateway that allows several; above 1: it overran)."""
        return utilisation(self.busy_ms, self.period_ms, self.connections)

    def encode(self) -> bytes:
        """The status as JSON, its version and kind first."""
        return _GATEWAY_STATUS_HEAD + _ENCODER.encode(self)[1:]

    @classmethod
    def decode(cls, body: bytes) -> GatewayStatus:
        """The status in `body`; MessageError (with `body`) when it is not one."""
        error: Exception | None = None
        try:
            head = _HEAD_DECODER.decode(body)
            if head.v == GATEWAY_STATUS_VERSION and head.kind == "gateway_status":
                return _GATEWAY_STATUS_DECODER.decode(body)
        except msgspec.DecodeError as exc:
            error = exc
        _explain("gateway_status", body, (GATEWAY_STATUS_VERSION,), error)


def decode_result(body: bytes) -> Reading | GatewayStatus:
    """A message of `emm.readings`: a reading, or a gateway's status by its kind; MessageError
    (with `body`) when it is neither."""
    try:
        kind = _HEAD_DECODER.decode(body).kind
    except msgspec.DecodeError:
        kind = None
    if kind == "gateway_status":
        return GatewayStatus.decode(body)
    return Reading.decode(body)


class TickMarker(msgspec.Struct, frozen=True, tag_field="kind", tag="marker"):
    """Sent to every shard queue of the jobs at every tick, before the tick's jobs: whichever
    worker it reaches owns that shard, even when the shard holds no gateway. It says how many
    of the tick's jobs the shard has and how many shards have any, so the owner can tell its
    share of the busy shards."""

    v: int
    tick_ms: int
    jobs: int  # this shard's jobs at this tick
    busy_shards: int  # shards with at least one job at this tick

    def encode(self) -> bytes:
        return _ENCODER.encode(self)

    @staticmethod
    def matches(body: bytes) -> bool:
        """Whether `body` is a marker (cheap: what `encode` writes first)."""
        return body.startswith(_MARKER_HEAD)

    @classmethod
    def decode(cls, body: bytes) -> TickMarker:
        """The marker in `body`; MessageError (with `body`) when it is not one."""
        try:
            marker = _MARKER_DECODER.decode(body)
        except msgspec.DecodeError as exc:
            raise MessageError(f"marker is malformed: {exc}", body) from None
        if marker.v != MARKER_VERSION:
            raise MessageError(
                f"marker has schema version {marker.v!r}, this build reads {MARKER_VERSION}", body
            )
        return marker


class _Head(msgspec.Struct, frozen=True):
    """The version and kind of a message (everything else in the body is skipped)."""

    v: int | None = None
    kind: str | None = None


_READING_HEAD = b'{"v":%d,"kind":"reading",' % READING_VERSION
_NO_GUARD = b',"guard":null}'
_GATEWAY_STATUS_HEAD = b'{"v":%d,"kind":"gateway_status",' % GATEWAY_STATUS_VERSION
_ENCODER = msgspec.json.Encoder()
_NO_TEXT = b',"text":{}'
_MARKER_HEAD = b'{"kind":"marker","v":%d,' % MARKER_VERSION
_MARKER_DECODER = msgspec.json.Decoder(TickMarker)
_HEAD_DECODER = msgspec.json.Decoder(_Head)
_READING_DECODER = msgspec.json.Decoder(Reading)
_GATEWAY_STATUS_DECODER = msgspec.json.Decoder(GatewayStatus)
_JOB_DECODER = msgspec.json.Decoder(_JobWire)
_OLDER_REQUESTS_DECODER = msgspec.json.Decoder(list[tuple[int, int, int]])
_OLDER_REGISTERS_DECODER = msgspec.json.Decoder(list[Any])
_MISSING_FIELD = re.compile(r"Object missing required field `([^`]*)`")


def _explain(
    kind: str, body: bytes, versions: tuple[int, ...], error: Exception | None
) -> NoReturn:
    """Raise the MessageError of a body msgspec refused (`error`) or found of another kind or
    version (None), saying first what is wrong with the body as a whole."""
    data = _load(body, kind, versions)
    fields = data.get("fields")
    # json reads NaN, Infinity and 1e999, msgspec refuses them: say why
    if (
        kind == "reading"
        and isinstance(fields, dict)
        and not all(math.isfinite(v) for v in fields.values() if isinstance(v, float))
    ):
        raise MessageError("reading is malformed: a field value is not a finite number", body)
    _fail(kind, body, error)


def _fail(kind: str, body: bytes, error: Exception | str | None) -> NoReturn:
    """Raise the MessageError of a body whose head is right but whose rest is not."""
    if error is None:
        raise MessageError(f"{kind} is malformed", body)
    reason = str(error)
    missing = _MISSING_FIELD.match(reason)
    if missing:
        raise MessageError(f"{kind} lacks the key {missing.group(1)!r}", body)
    raise MessageError(f"{kind} is malformed: {reason}", body)


def _at(error: Exception, root: str) -> str:
    """A msgspec error about a part of a message, its path rewritten from that part's root."""
    reason = str(error)
    if " - at `$" in reason:
        return reason.replace("`$", f"`{root}", 1)
    return f"{reason} - at `{root}`"


def _load(body: bytes, kind: str, versions: tuple[int, ...]) -> dict[str, Any]:
    """`body` as a JSON object of `kind` and one of `versions`; else MessageError saying which
    of these it is not (the messages every decode failure starts from)."""
    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise MessageError(f"{kind} is not UTF-8 text: {exc}", body) from None
    except (ValueError, RecursionError) as exc:
        raise MessageError(f"{kind} is not valid JSON: {exc}", body) from None
    if not isinstance(data, dict):
        raise MessageError(f"{kind} is not a JSON object", body)
    if data.get("kind") != kind:
        raise MessageError(f"expected a {kind}, got kind {data.get('kind')!r}", body)
    version = data.get("v")
    if type(version) is not int or version not in versions:
        readable = ", ".join(str(v) for v in versions[:-1])
        readable = f"{readable} and {versions[-1]}" if readable else str(versions[-1])
        raise MessageError(
            f"{kind} has schema version {version!r}, this build reads {readable}", body
        )
    return data
