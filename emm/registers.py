"""What a register is: its address, function code, data type, byte/word order and scaling.

A `Register` is validated once when it is built (from a database row, a profile file or a job
message, all through `Register.from_mapping`), so everything downstream can trust it.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any

from emm.errors import ConfigError
from emm.modbus import BIT_FUNCTION_CODES, READ_FUNCTION_CODES


class DataType(IntEnum):
    """Register data types; the value is the `registers.data_type` code in PostgreSQL.

    Codes 1-3 are the original project's (int, long, float) and keep their meaning.
    """

    INT16 = 1
    INT32 = 2
    FLOAT32 = 3
    UINT16 = 4
    UINT32 = 5
    INT64 = 6
    UINT64 = 7
    FLOAT64 = 8
    BOOL = 9
    STRING = 10
    UINT8_HIGH = 11
    UINT8_LOW = 12
    INT8_HIGH = 13
    INT8_LOW = 14

    @property
    def words(self) -> int:
        """How many 16-bit registers (or bits, for BOOL) one value occupies (a STRING: one
        per two characters, its register's `length`)."""
        return _WORDS[self]

    @property
    def is_half(self) -> bool:
        """Whether the value is one byte of a register (the high byte is the one sent first)."""
        return self in _HALVES

    @property
    def bits(self) -> int:
        """The width of the raw value in bits."""
        return 8 if self in _HALVES else 16 * _WORDS[self]

    @property
    def struct_char(self) -> str:
        """The `struct` format character of the type (BOOL has none)."""
        return _STRUCT_CHAR[self]

    @property
    def is_float(self) -> bool:
        return self in (DataType.FLOAT32, DataType.FLOAT64)

    @classmethod
    def parse(cls, value: Any) -> DataType:
        """Accept a code (3), a code as text ("3") or a name ("float32")."""
        if isinstance(value, DataType):
            return value
        known = _DATA_TYPE_NAMES.get(value) if isinstance(value, str) else None
        if known is not None:
            return known
        text = str(value).strip().lower()
        if text.isdigit():
            try:
                return cls(int(text))
            except ValueError:
                pass
        else:
            for member in cls:
                if member.name.lower() == text:
                    return member
        names = ", ".join(f"{m.value} {m.name.lower()}" for m in cls)
        raise ConfigError(f"unknown data_type {value!r} (known: {names})")


_DATA_TYPE_NAMES = {member.name.lower(): member for member in DataType}

_WORDS = {
    DataType.INT16: 1,
    DataType.UINT16: 1,
    DataType.INT32: 2,
    DataType.UINT32: 2,
    DataType.FLOAT32: 2,
    DataType.INT64: 4,
    DataType.UINT64: 4,
    DataType.FLOAT64: 4,
    DataType.BOOL: 1,
    DataType.STRING: 1,
    DataType.UINT8_HIGH: 1,
    DataType.UINT8_LOW: 1,
    DataType.INT8_HIGH: 1,
    DataType.INT8_LOW: 1,
}
_HALVES = frozenset(
    {DataType.UINT8_HIGH, DataType.UINT8_LOW, DataType.INT8_HIGH, DataType.INT8_LOW}
)
_STRUCT_CHAR = {
    DataType.INT16: "h",
    DataType.UINT16: "H",
    DataType.INT32: "i",
    DataType.UINT32: "I",
    DataType.FLOAT32: "f",
    DataType.INT64: "q",
    DataType.UINT64: "Q",
    DataType.FLOAT64: "d",
    DataType.BOOL: "",
    DataType.STRING: "",
    # a half is read as its whole register, then its byte taken (`emm.codec`)
    DataType.UINT8_HIGH: "H",
    DataType.UINT8_LOW: "H",
    DataType.INT8_HIGH: "H",
    DataType.INT8_LOW: "H",
}


class Order(StrEnum):
    """Byte and word order, named by the order the value's bytes arrive in (A = most significant).

    ABCD big endian; CDAB words swapped (low word first); BADC bytes swapped in each word;
    DCBA little endian. For 16-bit values only the byte order matters (AB or BA).
    """

    ABCD = "ABCD"
    CDAB = "CDAB"
    BADC = "BADC"
    DCBA = "DCBA"

    @property
    def byte_order(self) -> int:
        """The original `byte_order` column code: 1 little, 2 big."""
        return BIG if self in (Order.ABCD, Order.CDAB) else LITTLE

    @property
    def word_order(self) -> int:
        """The original `word_order` column code: 1 little (low word first), 2 big."""
        return BIG if self in (Order.ABCD, Order.BADC) else LITTLE

    @classmethod
    def from_codes(cls, byte_order: int, word_order: int) -> Order:
        """Map the database's byte_order/word_order codes (1 little, 2 big) to an order."""
        for code, column in ((byte_order, "byte_order"), (word_order, "word_order")):
            if code not in (LITTLE, BIG):
                raise ConfigError(f"{column} must be 1 (little) or 2 (big), got {code!r}")
        return _FROM_CODES[(byte_order, word_order)]

    @classmethod
    def parse(cls, value: Any) -> Order:
        try:
            return cls(str(value).strip().upper())
        except ValueError:
            raise ConfigError(f"unknown order {value!r} (known: ABCD, CDAB, BADC, DCBA)") from None


LITTLE = 1
BIG = 2
_FROM_CODES = {
    (BIG, BIG): Order.ABCD,
    (BIG, LITTLE): Order.CDAB,
    (LITTLE, BIG): Order.BADC,
    (LITTLE, LITTLE): Order.DCBA,
}

# Raw "not available" patterns assumed for each type unless a register says otherwise. They are
# the values vendors (and SunSpec) use for "no value"; NaN and infinities are always missing.
DEFAULT_MISSING: dict[DataType, frozenset[int]] = {
    DataType.INT16: frozenset({0x8000}),
    DataType.UINT16: frozenset({0xFFFF}),
    DataType.INT32: frozenset({0x80000000, 0x7FFFFFFF}),
    DataType.UINT32: frozenset({0xFFFFFFFF}),
    DataType.INT64: frozenset({0x8000000000000000}),
    DataType.UINT64: frozenset({0xFFFFFFFFFFFFFFFF}),
    DataType.FLOAT32: frozenset(),
    DataType.FLOAT64: frozenset(),
    DataType.BOOL: frozenset(),
    DataType.STRING: frozenset(),
    DataType.UINT8_HIGH: frozenset(),
    DataType.UINT8_LOW: frozenset(),
    DataType.INT8_HIGH: frozenset(),
    DataType.INT8_LOW: frozenset(),
}
# SunSpec scale factors are powers of ten in this range (sunssf, an int16)
SCALE_FACTOR_RANGE = range(-10, 11)
# the longest string a register may be: one read request's worth of registers
MAX_STRING_REGISTERS = 125

# Units of cumulative counters: a decrease means the meter restarted counting.
COUNTER_UNITS = frozenset(
    {"wh", "kwh", "mwh", "gwh", "varh", "kvarh", "mvarh", "vah", "kvah", "mvah", "ah", "kah"}
)
# poll_every: 0 is "once, then daily"; a larger class than this is a typo, not a plan
MAX_POLL_EVERY = 10_000
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,99}")  # whole name: `fullmatch`
# Names a register may not take: InfluxDB's tags of every point (a field of the same name
# shadows the tag in InfluxQL) and its time column (a field so named is dropped).
RESERVED_NAMES = frozenset({"meter_id", "type", "description", "time"})


def name_problem(name: object) -> str | None:
    """Why `name` cannot be a register's measurement_name, or None when it can."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return (
            f"measurement_name {name!r} must start with a letter or _ and use only "
            "letters, digits, _ . - (at most 100 characters)"
        )
    if name.lower() in RESERVED_NAMES:
        return (
            f"measurement_name {name!r} is reserved (InfluxDB tags and time: "
            f"{', '.join(sorted(RESERVED_NAMES))})"
        )
    return None


def parse_missing(value: Any, data_type: DataType) -> frozenset[int] | None:
    """Parse raw sentinel patterns: a comma separated text ("0xFFFF, 0x8000") or a list of
    integers or such texts (["0xFFFF", 32768]).

    None means "the type's defaults"; an empty text or list means "no sentinels".
    """
    if value is None:
        return None
    if isinstance(value, str):
        parts = value.replace(";", ",").split(",")
    elif isinstance(value, list | tuple | frozenset | set):
        parts = [str(m) for m in value]
    else:
        raise ConfigError(
            f'missing must be a list or a text such as "0xFFFF, 0x8000", got {type(value).__name__}'
        )
    patterns = set()
    for part in parts:
        part = part.strip()
        if not part:
            continue
        try:
            raw = int(part, 0)
        except ValueError:
            raise ConfigError(f"missing value {part!r} is not an integer such as 0xFFFF") from None
        limit = 1 << data_type.bits
        if not 0 <= raw < limit:
            raise ConfigError(
                f"missing value {part} does not fit a {data_type.name.lower()} (0..{limit - 1:#x})"
            )
        patterns.add(raw)
    return frozenset(patterns)


@dataclass(frozen=True, slots=True)
class Register:
    """One value of a device: where it is, how to decode it and what to call it.

    `missing` holds raw (unsigned) bit patterns meaning "not available"; None uses the
    type's defaults (`DEFAULT_MISSING`). `poll_every` is the register's poll class: read on
    every Nth tick of its meter, or with 0 once when the scheduler first reads the meter and
    then daily (identity and ratings: serial number, firmware, nominal values).

    Text registers are read as text: a STRING of `length` registers, or an integer named by
    `enum` (value -> name) or by `bits` (bit number -> name, the names of the set bits). A
    `scale_register` names another register of the map (a SunSpec scale factor, an int16
    power of ten) read in the same request and applied to this reading's value.
    """

    name: str
    address: int
    function_code: int = 3
    data_type: DataType = DataType.FLOAT32
    order: Order = Order.ABCD
    unit: str = ""
    scale: float = 1.0
    offset: float = 0.0
    missing: frozenset[int] | None = None
    poll_every: int = 1
    length: int = 0
    enum: tuple[tuple[int, str], ...] = ()
    bits: tuple[tuple[int, str], ...] = ()
    scale_register: str = ""
    sentinels: frozenset[float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_type", DataType.parse(self.data_type))
        object.__setattr__(self, "order", Order.parse(self.order))
        problem = name_problem(self.name)
        if problem is not None:
            raise ConfigError(problem)
        if self.function_code not in READ_FUNCTION_CODES:
            raise ConfigError(
                f"function_code {self.function_code!r} is not a read function code (1, 2, 3, 4)"
            )
        is_bit = self.data_type is DataType.BOOL
        if is_bit != (self.function_code in BIT_FUNCTION_CODES):
            raise ConfigError(
                f"data_type {self.data_type.name.lower()} does not fit function_code "
                f"{self.function_code}: bool goes with 1/2, numbers with 3/4"
            )
        _check_kind(self)
        if not isinstance(self.address, int) or self.address < 0 or self.end > 65536:
            raise ConfigError(
                f"register_address {self.address!r} is outside 0..65535 for a "
                f"{self.data_type.name.lower()}"
            )
        if not (math.isfinite(self.scale) and self.scale != 0):
            raise ConfigError(f"scale {self.scale!r} must be a finite number other than 0")
        if not math.isfinite(self.offset):
            raise ConfigError(f"offset {self.offset!r} must be a finite number")
        if (
            not isinstance(self.poll_every, int)
            or isinstance(self.poll_every, bool)
            or not 0 <= self.poll_every <= MAX_POLL_EVERY
        ):
            raise ConfigError(
                f"poll_every {self.poll_every!r} must be a whole number of ticks, "
                f"0..{MAX_POLL_EVERY} (0: once, then daily)"
            )
        object.__setattr__(self, "sentinels", _sentinels(self))

    @property
    def is_counter(self) -> bool:
        """Whether the value is a cumulative counter (energy, charge) that only grows."""
        return not self.is_text and self.unit.strip().lower() in COUNTER_UNITS

    @property
    def is_text(self) -> bool:
        """Whether the value is text (a string, an enum's name, a bitfield's set names):
        stored in `meter_info`, not `energy`."""
        return self.data_type is DataType.STRING or bool(self.enum) or bool(self.bits)

    @property
    def words(self) -> int:
        """How many registers (or bits) the value occupies."""
        return self.length if self.data_type is DataType.STRING else self.data_type.words

    @property
    def end(self) -> int:
        """One past the last address the value occupies."""
        return self.address + self.words

    def to_row(self) -> list[Any]:
        """The register as a row of a job (columns `ROW_COLUMNS`), the trailing values
        left out while they hold their defaults: `["voltageL1", 0, 4, "V"]` is a float32 in
        ABCD order, unscaled."""
        row: list[Any] = [
            self.name,
            self.address,
            self.function_code,
            self.unit,
            self.data_type.name.lower(),
            self.order.value,
            self.scale,
            self.offset,
            None if self.missing is None else sorted(self.missing),
            self.poll_every,
            self.length,
            {str(k): v for k, v in self.enum} or None,
            {str(k): v for k, v in self.bits} or None,
            self.scale_register,
        ]
        while len(row) > 3 and row[-1] == _ROW_DEFAULTS[len(row) - 4]:
            row.pop()
        return row

    @classmethod
    def from_row(cls, row: list[Any]) -> Register:
        """Inverse of `to_row`; raises ConfigError naming what is wrong."""
        if not isinstance(row, list):
            raise ConfigError(f"register row must be a list, got {type(row).__name__}")
        if not 3 <= len(row) <= len(ROW_COLUMNS):
            raise ConfigError(
                f"register row has {len(row)} values, expected 3 to {len(ROW_COLUMNS)}: "
                + ", ".join(ROW_COLUMNS)
            )
        return cls.from_mapping(dict(zip(ROW_COLUMNS, row, strict=False)))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Register:
        """Build a register from a mapping of `REGISTER_KEYS`, the one vocabulary of every
        source (profile rows, database rows, jobs); raises ConfigError naming what is wrong.

        name, address and function_code are required. data_type is a code, its text or a name
        ("float32", the default); order a name (ABCD, the default); missing as `parse_missing`
        takes it; poll_every a number of ticks (1, the default); length the registers of a
        string; enum and bits mappings of a number (or its text) to a name; scale_register the
        name of the register holding this one's power of ten. A null is the default too. Other
        keys are not read.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"register must be a mapping, got {type(data).__name__}")
        try:
            data_type = DataType.parse(data.get("data_type", DataType.FLOAT32))
            unit, scale, offset = data.get("unit"), data.get("scale"), data.get("offset")
            poll_every = data.get("poll_every")
            return cls(
                name=data["name"],
                address=data["address"],
                function_code=data["function_code"],
                data_type=data_type,
                order=Order.parse(data.get("order") or Order.ABCD),
                unit="" if unit is None else str(unit),
                scale=1.0 if scale is None else float(scale),
                offset=0.0 if offset is None else float(offset),
                missing=parse_missing(data.get("missing"), data_type),
                poll_every=1 if poll_every is None else poll_every,
                length=data.get("length") or 0,
                enum=parse_names(data.get("enum"), "enum"),
                bits=parse_names(data.get("bits"), "bits"),
                scale_register=data.get("scale_register") or "",
            )
        except KeyError as exc:
            raise ConfigError(f"register is missing the key {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(str(exc)) from None


# What `Register.from_mapping` reads: the register's own field names.
REGISTER_KEYS = (
    "name",
    "address",
    "function_code",
    "data_type",
    "order",
    "unit",
    "scale",
    "offset",
    "missing",
    "poll_every",
    "length",
    "enum",
    "bits",
    "scale_register",
)
# the values of a register row in a job, in order
ROW_COLUMNS = (
    "name",
    "address",
    "function_code",
    "unit",
    "data_type",
    "order",
    "scale",
    "offset",
    "missing",
    "poll_every",
    "length",
    "enum",
    "bits",
    "scale_register",
)
_ROW_DEFAULTS = ("", "float32", "ABCD", 1.0, 0.0, None, 1, 0, None, None, "")


def _sentinels(register: Register) -> frozenset[float]:
    """The sentinel patterns as the decoded (unscaled) values they turn into."""
    patterns = (
        register.missing if register.missing is not None else DEFAULT_MISSING[register.data_type]
    )
    dtype = register.data_type
    if dtype is DataType.BOOL or dtype is DataType.STRING or not patterns:
        return frozenset()
    if dtype.is_half:
        signed = dtype in (DataType.INT8_HIGH, DataType.INT8_LOW)
        return frozenset(raw - 256 if signed and raw >= 128 else raw for raw in patterns)
    width = dtype.words * 2
    unsigned = {2: "H", 4: "I", 8: "Q"}[width]
    values = set()
    for raw in patterns:
        (value,) = struct.unpack(">" + dtype.struct_char, struct.pack(">" + unsigned, raw))
        if not (isinstance(value, float) and math.isnan(value)):
            values.add(value)
    return frozenset(values)


def parse_names(value: Any, what: str) -> tuple[tuple[int, str], ...]:
    """An enum's or a bitfield's names: a mapping of a number (or its text: "1", "0x10") to a
    name, as sorted pairs; None or an empty mapping is none."""
    if value is None:
        return ()
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError:
            raise ConfigError(f'{what} must be a mapping such as {{1 = "OFF"}}') from None
    if not isinstance(value, Mapping):
        raise ConfigError(f"{what} must be a mapping of numbers to names, got {value!r}")
    pairs = {}
    for key, name in value.items():
        try:
            number = key if isinstance(key, int) and not isinstance(key, bool) else int(key, 0)
        except (TypeError, ValueError):
            raise ConfigError(f"{what} key {key!r} is not a whole number") from None
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{what} name for {number} must be a non-empty text")
        pairs[number] = name.strip()
    return tuple(sorted(pairs.items()))


def _check_kind(register: Register) -> None:
    """Refuse a string, enum, bitfield or scale-factor link that does not fit its type."""
    dtype, name = register.data_type, register.name
    if dtype is DataType.STRING:
        if not isinstance(register.length, int) or not 1 <= register.length <= MAX_STRING_REGISTERS:
            raise ConfigError(
                f"a string needs a length of 1..{MAX_STRING_REGISTERS} registers, "
                f"got {register.length!r}"
            )
    elif register.length:
        raise ConfigError(f"length {register.length!r} is for strings only")
    if register.enum and register.bits:
        raise ConfigError("a register has enum names or bit names, not both")
    if (register.enum or register.bits) and (
        dtype.is_float or dtype in (DataType.BOOL, DataType.STRING)
    ):
        raise ConfigError(f"enum and bits need an integer data_type, not {dtype.name.lower()}")
    if register.bits:
        for bit, _name in register.bits:
            if not 0 <= bit < dtype.bits:
                raise ConfigError(f"bit {bit} is outside 0..{dtype.bits - 1} of {name!r}")
    if register.scale_register:
        problem = name_problem(register.scale_register)
        if problem is not None:
            raise ConfigError(f"scale_register: {problem}")
        if register.scale_register == name:
            raise ConfigError(f"register {name!r} cannot be its own scale_register")
        if register.is_text or dtype is DataType.BOOL:
            raise ConfigError("scale_register needs a numeric register")


def scale_problems(registers: Sequence[Register]) -> dict[str, str]:
    """Why some registers' scale factors cannot be applied: each `scale_register` must name
    an int16 register of the same map and function code with the same poll class (so both are
    read in the same request), by the name of the register that cannot. Empty when all can."""
    by_name = {r.name: r for r in registers}
    problems = {}
    for reg in registers:
        if not reg.scale_register:
            continue
        sf = by_name.get(reg.scale_register)
        if sf is None:
            problems[reg.name] = f"scale_register {reg.scale_register!r} is not a register"
        elif sf.data_type is not DataType.INT16 or sf.scale_register or sf.is_text:
            problems[reg.name] = f"scale_register {sf.name!r} must be a plain int16 (a sunssf)"
        elif sf.function_code != reg.function_code or sf.poll_every != reg.poll_every:
            problems[reg.name] = (
                f"scale_register {sf.name!r} must have the same function_code and poll_every"
            )
    return problems
