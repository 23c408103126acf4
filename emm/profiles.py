"""Device profiles: register maps shipped as TOML files, one per device type.

A profile is validated whole when loaded; a bad row is reported with the file, the line of its
`[[registers]]` table and the reason, and the profile is rejected (a half map would store
misleading readings). An optional `[plausibility]` table gives the type's limits
(`emm.plausibility`: `max_power_w`, the voltage, frequency and power factor ranges...); a
profile without it, or a limit left out, has the defaults. `emm migrate` loads the shipped
profiles into PostgreSQL for types that have no registers yet; `emm profiles import FILE`
(re)places one type's rows.
"""

from __future__ import annotations

import itertools
import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from emm.errors import ConfigError
from emm.limits import MAX_REGISTERS_PER_TYPE
from emm.modbus import MAX_BITS_PER_READ, MAX_REGISTERS_PER_READ
from emm.planner import DEFAULT_MAX_GAP, ReadLimits
from emm.plausibility import DEFAULT_PLAUSIBILITY, Plausibility
from emm.registers import REGISTER_KEYS, DataType, Register, scale_problems

_TYPE = re.compile(r"[a-z0-9_]{1,64}")  # the whole type: `fullmatch`
# A row's keys are `Register.from_mapping`'s, plus the datasheet reference.
_ROW_KEYS = {*REGISTER_KEYS, "source"}
_REQUIRED = ("name", "address", "function_code", "data_type")
_TOP_KEYS = {
    "type",
    "name",
    "source",
    "max_read_registers",
    "max_read_bits",
    "max_gap_registers",
    "plausibility",
    "sunspec",
}
_SUNSPEC_KEYS = {"base", "models", "maker", "model"}


@dataclass(frozen=True)
class ProfileRegister:
    """A register of a profile and the datasheet table it comes from."""

    register: Register
    source: str


@dataclass(frozen=True)
class Profile:
    """A device type's register map and read limits."""

    type: str
    name: str
    source: str
    limits: ReadLimits
    rows: tuple[ProfileRegister, ...]
    path: str
    plausibility: Plausibility = DEFAULT_PLAUSIBILITY
    sunspec: SunSpecChain | None = None

    @property
    def registers(self) -> tuple[Register, ...]:
        return tuple(row.register for row in self.rows)


@dataclass(frozen=True)
class SunSpecChain:
    """How a SunSpec device lays out its models (a profile's `[sunspec]` table): the marker's
    address, each model's id and length in order, and the maker and model its common model
    names. The simulator serves the marker and model headers of such a profile, so `emm probe`
    can walk its chain."""

    base: int
    models: tuple[tuple[int, int], ...]
    maker: str
    model: str

    @classmethod
    def parse(cls, data: Any, path: str) -> SunSpecChain:
        if not isinstance(data, dict) or set(data) - _SUNSPEC_KEYS:
            raise ConfigError(f"{path}: [sunspec] takes {', '.join(sorted(_SUNSPEC_KEYS))}")
        try:
            models = tuple((int(m), int(n)) for m, n in data["models"])
            return cls(int(data["base"]), models, str(data["maker"]), str(data["model"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: [sunspec] is malformed: {exc!r}") from None

    def headers(self) -> list[tuple[int, int, int]]:
        """(address, model id, length) of each model header, the end model last."""
        out, address = [], self.base + 2
        for model_id, length in self.models:
            out.append((address, model_id, length))
            address += 2 + length
        out.append((address, 0xFFFF, 0))
        return out


def _row_lines(text: str) -> list[int]:
    """1-based line numbers of each `[[registers]]` header, in order."""
    return [
        number
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip().startswith("[[registers]]")
    ]


def parse_profile(text: str, path: str) -> Profile:
    """Validate a profile's text; ConfigError names `path`, the line and what is wrong."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    unknown = set(data) - _TOP_KEYS - {"registers"}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {', '.join(sorted(unknown))}")
    type_ = data.get("type")
    if not isinstance(type_, str) or not _TYPE.fullmatch(type_):
        raise ConfigError(f"{path}: line 1: 'type' must be lowercase letters, digits or _")
    try:
        limits = ReadLimits(
            max_registers=int(data.get("max_read_registers", MAX_REGISTERS_PER_READ)),
            max_bits=int(data.get("max_read_bits", MAX_BITS_PER_READ)),
            max_gap=int(data.get("max_gap_registers", DEFAULT_MAX_GAP)),
        )
    except (ConfigError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: read limits: {exc}") from None
    plausibility = _plausibility(data.get("plausibility", {}), path)
    rows_data = data.get("registers")
    if not isinstance(rows_data, list) or not rows_data:
        raise ConfigError(f"{path}: no [[registers]] rows")
    if len(rows_data) > MAX_REGISTERS_PER_TYPE:
        raise ConfigError(
            f"{path}: {len(rows_data)} [[registers]] rows, at most {MAX_REGISTERS_PER_TYPE} "
            "are allowed"
        )
    lines = _row_lines(text)
    rows: list[ProfileRegister] = []
    names: set[str] = set()
    for index, row in enumerate(rows_data):
        line = lines[index] if index < len(lines) else 0
        where = f"{path}: line {line}"
        rows.append(_parse_row(row, where))
        name = rows[-1].register.name
        if name in names:
            raise ConfigError(f"{where}: name {name!r} is used twice")
        names.add(name)
    _check_overlaps(rows, path, lines)
    problems = scale_problems([row.register for row in rows])
    for index, row in enumerate(rows):
        if row.register.name in problems:
            line = lines[index] if index < len(lines) else 0
            raise ConfigError(f"{path}: line {line}: {problems[row.register.name]}")
    return Profile(
        type=type_,
        name=str(data.get("name", type_)),
        source=str(data.get("source", "")),
        limits=limits,
        rows=tuple(rows),
        path=path,
        plausibility=plausibility,
        sunspec=None if "sunspec" not in data else SunSpecChain.parse(data["sunspec"], path),
    )


def _plausibility(data: Any, path: str) -> Plausibility:
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: [plausibility] must be a table")
    try:
        return Plausibility.from_mapping(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: [plausibility]: {exc}") from None


def _parse_row(row: Any, where: str) -> ProfileRegister:
    if not isinstance(row, dict):
        raise ConfigError(f"{where}: a register row must be a table")
    unknown = set(row) - _ROW_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    for key in _REQUIRED:
        if key not in row:
            raise ConfigError(f"{where}: missing key {key!r}")
    missing = row.get("missing")
    if missing is not None and not isinstance(missing, list):
        raise ConfigError(f"{where}: 'missing' must be a list such as [\"0xFFFF\"]")
    try:
        register = Register.from_mapping(row)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return ProfileRegister(register, str(row.get("source", "")))


def _check_overlaps(rows: list[ProfileRegister], path: str, lines: list[int]) -> None:
    order = sorted(
        range(len(rows)), key=lambda i: (rows[i].register.function_code, rows[i].register.address)
    )
    for a, b in itertools.pairwise(order):
        ra, rb = rows[a].register, rows[b].register
        if ra.function_code == rb.function_code and rb.address < ra.end and not _halves(ra, rb):
            line = lines[b] if b < len(lines) else 0
            raise ConfigError(
                f"{path}: line {line}: {rb.name!r} at {rb.address} overlaps {ra.name!r} "
                f"({ra.address}..{ra.end - 1})"
            )


def _halves(a: Register, b: Register) -> bool:
    """Whether two registers are the two bytes of one register (which may share it)."""
    high = (DataType.UINT8_HIGH, DataType.INT8_HIGH)
    return (
        a.address == b.address
        and a.data_type.is_half
        and b.data_type.is_half
        and (a.data_type in high) != (b.data_type in high)
    )


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from None
    return parse_profile(text, str(p))


def shipped_profiles() -> list[Profile]:
    """The profiles that come with the package, sorted by type."""
    folder = resources.files("emm") / "profiles"
    profiles = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            profiles.append(
                parse_profile(entry.read_text(encoding="utf-8"), f"profiles/{entry.name}")
            )
    return profiles


def shipped_profile(type_: str) -> Profile | None:
    """The shipped profile of `type_`, if there is one."""
    for profile in shipped_profiles():
        if profile.type == type_:
            return profile
    return None
