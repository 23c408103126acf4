"""Messages between the services: a `Job` (scheduler -> worker), a `Reading` (worker -> writer),
and a `TickMarker` (scheduler -> whichever worker owns a shard of the jobs).

Both are msgspec Structs encoded as JSON with a schema version `v` and a `kind`. Decoding a
body that is not a valid message raises MessageError with the raw bytes attached, so the caller can
dead-letter exactly what it received.

Jobs are version 3: the meter and tick, then the `plan_id` and the `plan` of the meter's type
(`emm.plan`), the same bytes for every meter of a type. A worker parses and validates a plan the
first time it sees its id and then only reads the head of each job. Version 2 jobs (the plan's
`requests` and `registers` at the top level, registers as rows) and version 1 jobs (registers as
objects) are still read, their plans cached by a hash of their bytes (a worker may read only
those while the scheduler is older than it).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any, NoReturn

import msgspec

from emm.errors import ConfigError, MessageError
from emm.plan import Plan, PlanCache
from emm.planner import ReadRequest
from emm.registers import Register

JOB_VERSION = 3
JOB_VERSIONS_READ = (1, 2, 3)
READING_VERSION = 1
MARKER_VERSION = 1


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


class Job(msgspec.Struct, frozen=True):
    """Read one meter for one tick: everything the worker needs, nothing it must look up."""

    meter: Meter
    tick_ms: int
    deadline_ms: int
    plan: Plan

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
        return cls(wire.meter, wire.tick_ms, wire.deadline_ms, read_plan(wire, body, plans))


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
        return _READING_HEAD + _ENCODER.encode(self)[1:]

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
_ENCODER = msgspec.json.Encoder()
_MARKER_HEAD = b'{"kind":"marker","v":%d,' % MARKER_VERSION
_MARKER_DECODER = msgspec.json.Decoder(TickMarker)
_HEAD_DECODER = msgspec.json.Decoder(_Head)
_READING_DECODER = msgspec.json.Decoder(Reading)
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
