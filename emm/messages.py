"""Messages between the services: a `Job` (scheduler -> worker), a `Reading` (worker -> writer).

Both are frozen dataclasses that own their JSON encoding and carry a schema version `v`. Decoding a
body that is not a valid message raises MessageError with the raw bytes attached, so the caller can
dead-letter exactly what it received.

Jobs are version 2: each register is a row `[name, address, fc, unit, type, order, scale, offset,
missing]` with trailing defaults (float32, ABCD, unscaled) left out; version 1 spelled each one as
an object, twice the bytes, and workers still read it. The plan and registers come last, the same
bytes for every meter of a type, so a worker parses and validates them once per type and then
only reads the head of each job.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from emm.errors import ConfigError, MessageError
from emm.identity import ByIdentity
from emm.planner import ReadRequest
from emm.registers import Register

JOB_VERSION = 2
JOB_VERSIONS_READ = (1, 2)
READING_VERSION = 1
# where the part of a job shared by every meter of its type begins
_PLAN_START = b',"requests":'


@dataclass(frozen=True, slots=True)
class Meter:
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "host": self.host,
            "port": self.port,
            "unit_id": self.unit_id,
            "type": self.type,
            "description": self.description,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Meter:
        return cls(
            id=int(data["id"]),
            host=str(data["host"]),
            port=int(data["port"]),
            unit_id=int(data["unit_id"]),
            type=str(data["type"]),
            description=data.get("description"),
        )


@dataclass(frozen=True, slots=True)
class Job:
    """Read one meter for one tick: everything the worker needs, nothing it must look up."""

    meter: Meter
    tick_ms: int
    deadline_ms: int
    requests: tuple[ReadRequest, ...]
    registers: tuple[Register, ...]

    @property
    def job_id(self) -> str:
        return f"{self.meter.id}@{self.tick_ms}"

    def encode(self) -> bytes:
        # The plan and registers are the same for every meter of a type: serialise them once.
        head = _compact(
            {
                "v": JOB_VERSION,
                "kind": "job",
                "meter": self.meter.to_dict(),
                "tick_ms": self.tick_ms,
                "deadline_ms": self.deadline_ms,
            }
        )
        return head[:-1].encode() + _plan_json(self.requests, self.registers)

    @classmethod
    def decode(cls, body: bytes) -> Job:
        # Fast path: the plan part is byte for byte one already validated, so only the head
        # (meter and tick) is parsed.
        cut = body.find(_PLAN_START)
        known = _KNOWN_PLANS.get(body[cut:]) if cut > 0 else None
        data: dict[str, Any] | None = None
        if known is not None:
            try:
                data = _load(body[:cut] + b"}", "job", JOB_VERSIONS_READ)
                requests, registers = known
            except MessageError:
                known = None  # say what is wrong from the whole body
        if data is None or known is None:
            data = _load(body, "job", JOB_VERSIONS_READ)
        try:
            meter = Meter.from_dict(data["meter"])
            if known is None:
                requests = tuple(ReadRequest.from_list(r) for r in data["requests"])
                registers = tuple(_register(r) for r in data["registers"])
                if cut > 0 and _is_plan_only(body[cut:]):
                    if len(_KNOWN_PLANS) >= 256:
                        _KNOWN_PLANS.clear()
                    _KNOWN_PLANS[body[cut:]] = (requests, registers)
            return cls(
                meter=meter,
                tick_ms=int(data["tick_ms"]),
                deadline_ms=int(data["deadline_ms"]),
                requests=requests,
                registers=registers,
            )
        except KeyError as exc:
            raise MessageError(f"job lacks the key {exc.args[0]!r}", body) from None
        except (TypeError, ValueError, ConfigError) as exc:
            raise MessageError(f"job is malformed: {exc}", body) from None


# the plan part of recent jobs (from `_PLAN_START` to the end) -> its requests and registers
_KNOWN_PLANS: dict[bytes, tuple[tuple[ReadRequest, ...], tuple[Register, ...]]] = {}


def _register(data: Any) -> Register:
    return Register.from_dict(data) if isinstance(data, dict) else Register.from_row(data)


def _is_plan_only(tail: bytes) -> bool:
    """Whether `tail` holds the keys requests and registers and nothing else, so a job's
    head plus this tail mean the same as the whole body."""
    try:
        rest = json.loads(b"{" + tail[1:])
    except ValueError:
        return False
    return isinstance(rest, dict) and set(rest) == {"requests", "registers"}


@dataclass(frozen=True, slots=True)
class Status:
    """How the read of one meter went, stored in `meter_status`."""

    up: bool
    error_code: str = ""
    error: str = ""
    latency_ms: float = 0.0
    requests: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "up": self.up,
            "error_code": self.error_code,
            "error": self.error,
            "latency_ms": self.latency_ms,
            "requests": self.requests,
        }


@dataclass(frozen=True, slots=True)
class Reading:
    """The decoded values of one meter at one tick, with what could not be read."""

    meter: Meter
    tick_ms: int
    fields: dict[str, float]
    status: Status
    missing: tuple[str, ...] = ()
    errors: dict[str, str] = field(default_factory=dict)
    # fields that are cumulative counters (energy): they only grow unless the meter restarted
    counters: tuple[str, ...] = ()

    @property
    def reading_id(self) -> str:
        return f"{self.meter.id}@{self.tick_ms}"

    def encode(self) -> bytes:
        return json.dumps(
            {
                "v": READING_VERSION,
                "kind": "reading",
                "meter": self.meter.to_dict(),
                "tick_ms": self.tick_ms,
                "fields": self.fields,
                "status": self.status.to_dict(),
                "missing": list(self.missing),
                "errors": self.errors,
                "counters": list(self.counters),
            },
            separators=(",", ":"),
            allow_nan=False,
        ).encode()

    @classmethod
    def decode(cls, body: bytes) -> Reading:
        data = _load(body, "reading", (READING_VERSION,))
        try:
            fields = {str(k): float(v) for k, v in data["fields"].items()}
            if not all(math.isfinite(v) for v in fields.values()):
                raise ValueError("a field value is not a finite number")
            status = data["status"]
            return cls(
                meter=Meter.from_dict(data["meter"]),
                tick_ms=int(data["tick_ms"]),
                fields=fields,
                status=Status(
                    up=bool(status["up"]),
                    error_code=str(status.get("error_code", "")),
                    error=str(status.get("error", "")),
                    latency_ms=float(status.get("latency_ms", 0.0)),
                    requests=int(status.get("requests", 0)),
                ),
                missing=tuple(str(m) for m in data.get("missing", ())),
                errors={str(k): str(v) for k, v in data.get("errors", {}).items()},
                counters=tuple(str(c) for c in data.get("counters", ())),
            )
        except KeyError as exc:
            raise MessageError(f"reading lacks the key {exc.args[0]!r}", body) from None
        except (TypeError, ValueError, AttributeError, ConfigError) as exc:
            raise MessageError(f"reading is malformed: {exc}", body) from None


def _compact(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


def _plan_text(requests: tuple[ReadRequest, ...], registers: tuple[Register, ...]) -> bytes:
    """`,"requests":[...],"registers":[...]}`: the end of a job, the same for every meter of a
    type (so cached by the identity of the tuples the scheduler shares between them)."""
    return (
        f"{_PLAN_START.decode()}{_compact([r.to_list() for r in requests])},"
        f'"registers":{_compact([r.to_row() for r in registers])}}}'
    ).encode()


_plan_json = ByIdentity(_plan_text)


def _load(body: bytes, kind: str, versions: tuple[int, ...]) -> dict[str, Any]:
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
        readable = " and ".join(str(v) for v in versions)
        raise MessageError(
            f"{kind} has schema version {version!r}, this build reads {readable}", body
        )
    return data
