"""SunSpec: from a device's chain of models to a concrete register map (pure).

A SunSpec device holds the marker "SunS" (0x5375 0x6E53) at one of `BASES`; after it, model
follows model, each an ID register, a length register (the registers that follow) and its
points, until the end model (ID 0xFFFF). `emm probe` walks the chain with reads of two
registers per model header (`ModelBlock.after` says where the next one starts) and, for the
models `MODELS` knows, `register_map` builds the registers: each point at its address, with
its type, unit and scale-factor register. Discovery happens once, when a device is
configured: the jobs carry the fixed map like any other.

Points are named as the project names the same quantity (`voltageL1`, `acPower`,
`importActiveEnergy`) where one exists, else `m<model>.<point>` (the scale factors too), so
inverters and meters of any make give the same field names. The common model's strings are the
identity (`maker`, `model`, `options`, `firmware`, `serial`), read once and then daily.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from emm.errors import ConfigError
from emm.registers import DataType, Register

MARKER = (0x5375, 0x6E53)  # "SunS"
BASES = (40000, 0, 50000)
END_MODEL = 0xFFFF
COMMON = 1
# the longest chain walked: a device that never reaches the end model is not followed forever
MAX_MODELS = 64

# SunSpec type -> (our data type, what the value is)
_TYPES = {
    "uint16": DataType.UINT16,
    "int16": DataType.INT16,
    "sunssf": DataType.INT16,
    "count": DataType.UINT16,
    "acc32": DataType.UINT32,
    "acc64": DataType.UINT64,
    "uint32": DataType.UINT32,
    "int32": DataType.INT32,
    "uint64": DataType.UINT64,
    "float32": DataType.FLOAT32,
    "enum16": DataType.UINT16,
    "enum32": DataType.UINT32,
    "bitfield16": DataType.UINT16,
    "bitfield32": DataType.UINT32,
    "string": DataType.STRING,
}
# SunSpec units -> ours, and the scale that turns a percentage into a ratio (power factor)
_UNITS = {"Pct": ("", 0.01), "C": ("°C", 1.0), "Secs": ("s", 1.0), "Var": ("var", 1.0)}
_UNITS.update({"Varh": ("varh", 1.0)})
_SKIPPED = frozenset({"ID", "L", "Pad", "DA", "TmsPer"})

_COMMON_NAMES = {
    "Mn": "maker",
    "Md": "model",
    "Opt": "options",
    "Vr": "firmware",
    "SN": "serial",
}
_PHASES = {"A": "L1", "B": "L2", "C": "L3"}
_INVERTER_NAMES = {
    "A": "sumCurrent",
    "PPVphAB": "voltageL1L2",
    "PPVphBC": "voltageL2L3",
    "PPVphCA": "voltageL3L1",
    "W": "acPower",
    "Hz": "frequency",
    "VA": "apparentPower",
    "VAr": "reactivePower",
    "PF": "powerFactor",
    "WH": "acEnergy",
    "DCA": "dcCurrent",
    "DCV": "dcVoltage",
    "DCW": "dcPower",
    "TmpCab": "cabinetTemperature",
    "TmpSnk": "heatSinkTemperature",
    "TmpTrns": "transformerTemperature",
    "TmpOt": "otherTemperature",
    "St": "operatingState",
    "StVnd": "vendorState",
    "Evt1": "events",
} | {f"Aph{p}": f"current{q}" for p, q in _PHASES.items()}
_INVERTER_NAMES |= {f"PhVph{p}": f"voltage{q}" for p, q in _PHASES.items()}
_METER_NAMES = {
    "A": "sumCurrent",
    "PhV": "averageVoltageLN",
    "PPV": "averageVoltageLL",
    "PhVphAB": "voltageL1L2",
    "PhVphBC": "voltageL2L3",
    "PhVphCA": "voltageL3L1",
    "Hz": "frequency",
    "W": "activePower",
    "VA": "apparentPower",
    "VAR": "reactivePower",
    "PF": "powerFactor",
    "TotWhExp": "exportActiveEnergy",
    "TotWhImp": "importActiveEnergy",
    "TotVAhExp": "exportApparentEnergy",
    "TotVAhImp": "importApparentEnergy",
    "Evt": "meterEvents",
}
for _p, _q in _PHASES.items():
    _METER_NAMES |= {
        f"Aph{_p}": f"current{_q}",
        f"PhVph{_p}": f"voltage{_q}",
        f"Wph{_p}": f"activePower{_q}",
        f"VAph{_p}": f"apparentPower{_q}",
        f"VARph{_p}": f"reactivePower{_q}",
        f"PFph{_p}": f"powerFactor{_q}",
        f"TotWhExpPh{_p}": f"exportActiveEnergy{_q}",
        f"TotWhImpPh{_p}": f"importActiveEnergy{_q}",
    }
_DER_NAMES = {
    "W": "acPower",
    "VA": "apparentPower",
    "Var": "reactivePower",
    "PF": "powerFactor",
    "A": "sumCurrent",
    "LLV": "averageVoltageLL",
    "LNV": "averageVoltageLN",
    "Hz": "frequency",
    "TotWhInj": "acEnergy",
    "InvSt": "operatingState",
    "Alrm": "events",
    "VL1": "voltageL1",
    "VL2": "voltageL2",
    "VL3": "voltageL3",
    "VL1L2": "voltageL1L2",
    "VL2L3": "voltageL2L3",
    "VL3L1": "voltageL3L1",
    "AL1": "currentL1",
    "AL2": "currentL2",
    "AL3": "currentL3",
}
_NAMES: dict[int, dict[str, str]] = {COMMON: _COMMON_NAMES, 701: _DER_NAMES}
_NAMES |= {m: _INVERTER_NAMES for m in (101, 102, 103, 111, 112, 113)}
_NAMES |= {m: _METER_NAMES for m in (201, 202, 203, 204)}
_MPPT = 160
_MPPT_NAMES = {
    "IDStr": "mppt{k}Name",
    "DCA": "dcCurrent{k}",
    "DCV": "dcVoltage{k}",
    "DCW": "dcPower{k}",
    "DCWH": "dcEnergy{k}",
    "Tms": "mppt{k}Seconds",
    "Tmp": "mppt{k}Temperature",
    "DCSt": "mppt{k}State",
    "DCEvt": "mppt{k}Events",
}


@dataclass(frozen=True, slots=True)
class Point:
    """One point of a model definition."""

    name: str
    type: str
    size: int
    scale_factor: str
    units: str
    symbols: tuple[tuple[int, str], ...]


@dataclass(frozen=True, slots=True)
class Model:
    """A model definition: its fixed points and, for a model with repeating blocks (160),
    the points of one block."""

    id: int
    name: str
    points: tuple[Point, ...]
    repeat: tuple[Point, ...] = ()

    @property
    def fixed_length(self) -> int:
        """Registers of the fixed part, the ID and length registers included."""
        return sum(p.size for p in self.points)

    @property
    def block_length(self) -> int:
        return sum(p.size for p in self.repeat)

    @property
    def least_length(self) -> int:
        """The shortest length (L) a device may give: trailing padding may be left out (a
        common model of length 65)."""
        points = list(self.points)
        while points and points[-1].type == "pad":
            points.pop()
        return sum(p.size for p in points) - 2


@cache
def models() -> dict[int, Model]:
    """The models this build knows (`sunspec_models.toml`), by id."""
    text = (resources.files("emm") / "sunspec_models.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)["models"]
    return {
        int(key): Model(
            int(key), value["name"], _points(value["points"]), _points(value.get("repeat", []))
        )
        for key, value in data.items()
    }


def _points(rows: list[list[Any]]) -> tuple[Point, ...]:
    return tuple(
        Point(name, type_, size, sf, units, tuple(sorted((int(k), v) for k, v in symbols.items())))
        for name, type_, size, sf, units, symbols in rows
    )


@dataclass(frozen=True, slots=True)
class ModelBlock:
    """One model of a device's chain: its id, the address of its ID register and its length
    (the registers after the length register)."""

    model_id: int
    address: int
    length: int

    @property
    def after(self) -> int:
        """The address of the next model's ID register."""
        return self.address + 2 + self.length

    @property
    def known(self) -> bool:
        return self.model_id in models()


def blocks_in(model: Model, block: ModelBlock) -> int:
    """How many repeating blocks a model's length leaves room for (0 for a model without)."""
    if not model.repeat:
        return 0
    return max(0, (block.length + 2 - model.fixed_length) // model.block_length)


def register_map(
    chain: Sequence[ModelBlock], *, function_code: int = 3, source: str = "SunSpec model"
) -> list[tuple[Register, str]]:
    """The registers of the known models of `chain`, each with the model and point it comes
    from; unknown models are left out. Raises ConfigError for a model shorter than its
    definition."""
    rows: list[tuple[Register, str]] = []
    used: set[str] = set()
    for block in chain:
        model = models().get(block.model_id)
        if model is None:
            continue
        if block.length < model.least_length:
            raise ConfigError(
                f"model {block.model_id} at {block.address} has length {block.length}, "
                f"its definition needs {model.least_length}"
            )
        known = _NAMES.get(model.id, {})
        fixed = {
            p.name: _unique(known.get(p.name) or f"m{model.id}.{p.name}", used)
            for p in model.points
            if _kept(p)
        }
        emit = _Emitter(model, fixed, function_code, source)
        rows += emit(model.points, block.address, fixed)
        for k in range(1, blocks_in(model, block) + 1):
            start = block.address + model.fixed_length + (k - 1) * model.block_length
            names = {
                p.name: _unique(
                    _MPPT_NAMES.get(p.name, f"m{model.id}.{p.name}{{k}}").format(k=k), used
                )
                for p in model.repeat
                if _kept(p)
            }
            rows += emit(model.repeat, start, names)
    return rows


def _kept(point: Point) -> bool:
    return point.name not in _SKIPPED and point.type != "pad"


def _unique(name: str, used: set[str]) -> str:
    """`name`, or with a suffix when a model before took it (a second meter in one chain)."""
    unique, n = name, 1
    while unique in used:
        n += 1
        unique = f"{name}_{n}"
    used.add(unique)
    return unique


@dataclass(frozen=True)
class _Emitter:
    """Turns a run of points into registers; scale factors are the model's fixed points."""

    model: Model
    scale_factors: dict[str, str]
    function_code: int
    source: str

    def __call__(
        self, points: tuple[Point, ...], start: int, names: dict[str, str]
    ) -> list[tuple[Register, str]]:
        out: list[tuple[Register, str]] = []
        address = start
        for point in points:
            at, address = address, address + point.size
            if not _kept(point) or point.name not in names:
                continue
            out.append((self._register(point, at, names[point.name]), self._cite(point)))
        return out

    def _cite(self, point: Point) -> str:
        return f"{self.source} {self.model.id} ({self.model.name}), point {point.name}"

    def _register(self, point: Point, address: int, name: str) -> Register:
        unit, scale = _UNITS.get(point.units, (point.units, 1.0))
        dtype = _TYPES[point.type]
        enum = point.symbols if point.type.startswith("enum") else ()
        # a bitfield without names still lists its set bits (bit3, ...)
        bits = (point.symbols or ((0, "bit0"),)) if point.type.startswith("bitfield") else ()
        plain = point.type in ("sunssf", "count")
        return Register(
            name=name,
            address=address,
            function_code=self.function_code,
            data_type=dtype,
            unit="" if plain else unit,
            scale=scale,
            poll_every=0 if point.type in ("string", "count") else 1,
            length=point.size if dtype is DataType.STRING else 0,
            enum=enum,
            bits=bits,
            scale_register=self.scale_factors.get(point.scale_factor, ""),
        )


def type_name(maker: str, model: str) -> str:
    """A meter type named after the device's maker and model (model 1): lowercase letters,
    digits and _ ("SMA", "STP 10.0-3AV-40" -> "sma_stp_10_0_3av_40")."""
    text = f"{maker} {model}".lower()
    out = "".join(c if c.isascii() and c.isalnum() else "_" for c in text)
    while "__" in out:
        out = out.replace("__", "_")
    return out.strip("_")[:64] or "sunspec_device"
