"""What the virtual meters answer: values that are a pure function of (seed, time).

A test can therefore compute exactly what a reading at a given tick must contain with
`expected(...)`, and the server encodes those values with the same codec the worker decodes with.
Time is quantised to `step_s` and rounded to the nearest step, so a read a little after a tick
(less than half a step) sees the tick's values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from emm.codec import encode
from emm.registers import DataType, Register

VIRTUAL_TYPE = "virtual_modbustcp"
VIRTUAL_REGISTERS = (Register("test_measurement", 0, 3, DataType.INT16, unit="test_u"),)

ILLEGAL_DATA_ADDRESS = 2


def step_index(t_s: float, step_s: float) -> int:
    """The step a time falls in, rounding to the nearest step boundary."""
    return int(round(t_s / step_s))


def virtual_value(seed: int, k: int) -> int:
    """The original virtual meter's changing value: a sawtooth of period 1000 steps."""
    return (k * 37 + seed * 101) % 1000


@dataclass
class VirtualMeter:
    """The original project's virtual meter: holding register 0, an int16 that changes each step."""

    seed: int = 0
    step_s: float = 1.0
    registers: tuple[Register, ...] = VIRTUAL_REGISTERS
    _layout: dict[int, dict[int, Register]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._layout = {}
        for reg in self.registers:
            self._layout.setdefault(reg.function_code, {})[reg.address] = reg

    def values_at(self, t_s: float) -> dict[str, float]:
        """The physical value of every register at time `t_s` (seconds since the epoch)."""
        k = step_index(t_s, self.step_s)
        return {"test_measurement": float(virtual_value(self.seed, k))}

    def read(self, function_code: int, address: int, count: int, t_s: float) -> list[int] | int:
        """The words a read returns, or a Modbus exception code for unmapped addresses."""
        layout = self._layout.get(function_code, {})
        values = self.values_at(t_s)
        words: list[int] = []
        position = address
        end = address + count
        while position < end:
            reg = layout.get(position)
            if reg is None:
                return ILLEGAL_DATA_ADDRESS
            words.extend(encode(values[reg.name], reg))
            position = reg.end
        if position != end:  # the read ends inside a multi-word value
            return ILLEGAL_DATA_ADDRESS
        return words


def expected(seed: int, tick_ms: int, step_s: float = 1.0) -> dict[str, float]:
    """The fields a reading of the virtual meter with `seed` at `tick_ms` must contain."""
    return VirtualMeter(seed=seed, step_s=step_s).values_at(tick_ms / 1000)
