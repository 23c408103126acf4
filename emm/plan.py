"""A meter type's read plan: what to read and how to decode it, built once per type and set of
due registers.

The scheduler builds one `Plan` per meter type and set of due poll classes (from the registers
due at a tick and the type's read limits; `scheduler.jobs`) and every job reading that set
carries it. A plan is identified by `plan_id`, a hash of its canonical encoding, so a worker
parses and validates each plan once and then finds it by id (`PlanCache`).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

from emm.codec import RequestDecoder
from emm.errors import ConfigError
from emm.modbus import (
    BIT_FUNCTION_CODES,
    MAX_BITS_PER_READ,
    MAX_REGISTERS_PER_READ,
    READ_FUNCTION_CODES,
)
from emm.planner import ReadLimits, ReadRequest, assign
from emm.planner import plan as plan_requests
from emm.plausibility import NO_ROLES, Roles
from emm.registers import Register

PLAN_CACHE_SIZE = 256


class _Wire(msgspec.Struct, frozen=True):
    """A plan as it travels in a job: requests `[fc, address, count]`, registers as rows
    (`Register.to_row`) or mappings (`Register.from_mapping`)."""

    requests: list[tuple[int, int, int]]
    registers: list[Any]


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(_Wire)


@dataclass(frozen=True, slots=True, eq=False)
class Plan:
    """The planned read requests of a meter type, its registers, one decoder per request (in
    the same order), the names of its counters, the roles of its fields for the plausibility
    checks, and its canonical encoding with its id.

    Two plans are equal when their ids are, that is when they encode the same.
    """

    requests: tuple[ReadRequest, ...]
    registers: tuple[Register, ...]
    decoders: tuple[RequestDecoder, ...]
    counters: tuple[str, ...]
    encoded: bytes
    plan_id: str
    roles: Roles = NO_ROLES

    @classmethod
    def build(cls, registers: Iterable[Register], limits: ReadLimits | None = None) -> Plan:
        """Plan the fewest requests for `registers` within `limits`; raises ConfigError."""
        registers = tuple(registers)
        return cls.of(plan_requests(registers, limits), registers)

    @classmethod
    def of(cls, requests: Iterable[ReadRequest], registers: Iterable[Register]) -> Plan:
        """The plan of these requests and registers; raises ConfigError when a request is not a
        valid Modbus read or a register is covered by no request."""
        requests, registers = tuple(requests), tuple(registers)
        for request in requests:
            _check(request)
        decoders = tuple(
            RequestDecoder.build(request.address, request.count, covered)
            for request, covered in assign(requests, registers)
        )
        encoded = _ENCODER.encode(
            _Wire(
                [(r.function_code, r.address, r.count) for r in requests],
                [r.to_row() for r in registers],
            )
        )
        return cls(
            requests=requests,
            registers=registers,
            decoders=decoders,
            counters=tuple(r.name for r in registers if r.is_counter),
            encoded=encoded,
            plan_id=hashlib.blake2b(encoded, digest_size=8).hexdigest(),
            roles=Roles.of(registers),
        )

    @classmethod
    def decode(cls, data: bytes) -> Plan:
        """The plan in `data` (as `encoded` holds it, or any equivalent JSON).

        Raises msgspec.ValidationError for a wrong shape (its path from the plan's root) and
        ConfigError for a bad request or register.
        """
        wire = _DECODER.decode(data)
        return cls.of(
            (ReadRequest(*r) for r in wire.requests), (_register(r) for r in wire.registers)
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plan) and other.plan_id == self.plan_id

    def __hash__(self) -> int:
        return hash(self.plan_id)


def _register(data: Any) -> Register:
    if isinstance(data, list):
        return Register.from_row(data)
    if isinstance(data, dict):
        return Register.from_mapping(data)
    raise ConfigError(f"register must be a list or an object, got {type(data).__name__}")


def _check(request: ReadRequest) -> None:
    """Refuse what is not a Modbus read: the worker sends a plan's requests as they are."""
    fc, address, count = request.function_code, request.address, request.count
    if fc not in READ_FUNCTION_CODES:
        raise ConfigError(f"request function code {fc!r} is not a read (1, 2, 3, 4)")
    limit = MAX_BITS_PER_READ if fc in BIT_FUNCTION_CODES else MAX_REGISTERS_PER_READ
    if not 1 <= count <= limit:
        raise ConfigError(f"request count {count} is outside 1..{limit} for function code {fc}")
    if not 0 <= address <= 65536 - count:
        raise ConfigError(f"request address {address} is outside 0..{65536 - count}")


class PlanCache:
    """Plans by id, the `size` most recently used (a worker's memory of the types it reads)."""

    def __init__(self, size: int = PLAN_CACHE_SIZE) -> None:
        self.size = size
        self._plans: OrderedDict[str, Plan] = OrderedDict()

    def get(self, key: str) -> Plan | None:
        """The plan with this id (or key), if it is known."""
        plan = self._plans.get(key)
        if plan is not None:
            self._plans.move_to_end(key)
        return plan

    def add(self, plan: Plan, key: str | None = None) -> None:
        """Remember `plan` by its id (or by `key`, for a plan that came without its id),
        forgetting the least recently used one when full."""
        key = plan.plan_id if key is None else key
        self._plans[key] = plan
        self._plans.move_to_end(key)
        if len(self._plans) > self.size:
            self._plans.popitem(last=False)

    def __len__(self) -> int:
        return len(self._plans)
