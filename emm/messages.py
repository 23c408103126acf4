"""Messages between the services: a `Job` (scheduler -> worker), a `Reading` (worker -> writer).

Both are frozen dataclasses that own their JSON encoding and carry a schema version `v`. Decoding a
body that is not a valid message raises MessageError with the raw bytes attached, so the caller can
dead-letter exactly what it received.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from emm.errors import ConfigError, MessageError
from emm.planner import ReadRequest
from emm.registers import Register

SCHEMA_VERSION = 1


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
                "v": SCHEMA_VERSION,
                "kind": "job",
                "meter": self.meter.to_dict(),
                "tick_ms": self.tick_ms,
                "deadline_ms": self.deadline_ms,
            }
        )
        return (
            f'{head[:-1]},"requests":{_requests_json(self.requests)},'
            f'"registers":{_registers_json(self.registers)}}}'
        ).encode()

    @classmethod
    def decode(cls, body: bytes) -> Job:
        data = _load(body, "job")
        try:
            return cls(
                meter=Meter.from_dict(data["meter"]),
                tick_ms=int(data["tick_ms"]),
                deadline_ms=int(data["deadline_ms"]),
                requests=tuple(ReadRequest.from_list(r) for r in data["requests"]),
                registers=tuple(Register.from_dict(r) for r in data["registers"]),
            )
        except KeyError as exc:
            raise MessageError(f"job lacks the key {exc.args[0]!r}", body) from None
        except (TypeError, ValueError, ConfigError) as exc:
            raise MessageError(f"job is malformed: {exc}", body) from None


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
                "v": SCHEMA_VERSION,
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
        data = _load(body, "reading")
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


@lru_cache(maxsize=1024)
def _requests_json(requests: tuple[ReadRequest, ...]) -> str:
    return _compact([r.to_list() for r in requests])


@lru_cache(maxsize=1024)
def _registers_json(registers: tuple[Register, ...]) -> str:
    return _compact([r.to_dict() for r in registers])


def _load(body: bytes, kind: str) -> dict[str, Any]:
    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise MessageError(f"{kind} is not UTF-8 text: {exc}", body) from None
    except (ValueError, RecursionError) as exc:
        raise MessageError(f"{kind} is not valid JSON: {exc}", body) from None
    if not isinstance(data, dict):
        raise MessageError(f"{kind} is not a JSON object", body)
    if data.get("v") != SCHEMA_VERSION:
        raise MessageError(
            f"{kind} has schema version {data.get('v')!r}, this build reads {SCHEMA_VERSION}", body
        )
    if data.get("kind") != kind:
        raise MessageError(f"expected a {kind}, got kind {data.get('kind')!r}", body)
    return data
