"""Turning register words into values and back.

The worker decodes with `RequestDecoder` (one compiled decoder per planned read request, so a
whole response is unpacked with a few `struct` calls; a meter type's `Plan` builds them once); the
simulator encodes with `encode`, the exact inverse, so a byte-order mistake cannot hide on both
sides.

Byte/word orders are handled with two views of a response: the bytes as they arrived and the
bytes swapped within each 16-bit word. Every order is one of those views read big or little
endian: ABCD = arrived/big, DCBA = arrived/little, BADC = swapped/big, CDAB = swapped/little.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from emm.errors import DecodeError
from emm.registers import DataType, Order, Register

# (use the word-swapped view, endianness character) for each order.
_VIEW = {
    Order.ABCD: (False, ">"),
    Order.DCBA: (False, "<"),
    Order.BADC: (True, ">"),
    Order.CDAB: (True, "<"),
}


def _swap_pairs(data: bytes) -> bytes:
    swapped = bytearray(len(data))
    swapped[0::2] = data[1::2]
    swapped[1::2] = data[0::2]
    return bytes(swapped)


@lru_cache(maxsize=512)
def _words_struct(count: int) -> struct.Struct:
    return struct.Struct(f">{count}H")


def words_to_bytes(words: Sequence[int]) -> bytes:
    """Pack 16-bit register words into the bytes they were sent as."""
    try:
        return _words_struct(len(words)).pack(*words)
    except struct.error as exc:
        raise DecodeError(f"register words are not 16-bit unsigned integers: {exc}") from None


def encode(value: float, register: Register) -> list[int]:
    """The register words a device sends for `value` (the scaled, physical value).

    Integers are rounded to the nearest raw step; values outside the type's range raise
    DecodeError rather than wrapping around.
    """
    dtype = register.data_type
    if dtype is DataType.BOOL:
        return [1 if value else 0]
    raw: float | int = (value - register.offset) / register.scale
    if not dtype.is_float:
        raw = round(raw)
    return encode_raw(raw, register)


def encode_raw(raw: float | int, register: Register) -> list[int]:
    """The register words for an unscaled value (or a raw sentinel pattern as its type)."""
    dtype = register.data_type
    swapped, endian = _VIEW[register.order]
    try:
        data = struct.pack(endian + dtype.struct_char, raw)
    except struct.error as exc:
        raise DecodeError(
            f"register {register.name!r}: {raw!r} does not fit a {dtype.name.lower()}: {exc}"
        ) from None
    if swapped:
        data = _swap_pairs(data)
    return list(_words_struct(dtype.words).unpack(data))


def decode(words: Sequence[int], register: Register) -> float | None:
    """Decode one value from exactly its own words; None when it is a "not available" value."""
    if len(words) != register.data_type.words:
        raise DecodeError(
            f"register {register.name!r} at {register.address}: expected "
            f"{register.data_type.words} word(s) for a {register.data_type.name.lower()}, "
            f"got {len(words)}"
        )
    decoder = RequestDecoder.build(register.address, register.data_type.words, (register,))
    values, _missing = decoder.decode(words)
    return values.get(register.name)


@dataclass(frozen=True)
class RequestDecoder:
    """Decodes every register of one read request from its response in bulk.

    Build it once per (request, registers) with `build` (a meter type's `Plan` holds one per
    planned request), then call `decode` per read.
    """

    start: int
    count: int
    registers: tuple[Register, ...]
    # (swapped view?, Struct covering the response, register index for each unpacked value)
    _groups: tuple[tuple[bool, struct.Struct, tuple[int, ...]], ...] = field(repr=False)
    # name, scale, offset, sentinels, is_float — for each register, in order
    _post: tuple[tuple[str, float, float, frozenset[float], bool], ...] = field(repr=False)
    _bits: bool = field(repr=False)

    @staticmethod
    def build(start: int, count: int, registers: tuple[Register, ...]) -> RequestDecoder:
        """Compile the decoder for a request reading `count` words (or bits) from `start`."""
        for reg in registers:
            if reg.address < start or reg.end > start + count:
                raise DecodeError(
                    f"register {reg.name!r} at {reg.address} lies outside the request "
                    f"{start}..{start + count - 1}"
                )
        bits = bool(registers) and registers[0].data_type is DataType.BOOL
        groups = []
        if not bits:
            by_view: dict[tuple[bool, str], list[int]] = {}
            for index, reg in enumerate(registers):
                by_view.setdefault(_VIEW[reg.order], []).append(index)
            for (swapped, endian), indexes in by_view.items():
                indexes.sort(key=lambda i: (registers[i].address, i))
                # Registers that overlap (one address read as two types) go to separate
                # passes over the same bytes; normally there is one pass per view.
                passes: list[tuple[list[str], list[int], list[int]]] = []
                for i in indexes:
                    reg = registers[i]
                    for candidate in passes:
                        if candidate[2][0] <= reg.address:
                            fmt, members, position = candidate
                            break
                    else:
                        fmt, members, position = [endian], [], [start]
                        passes.append((fmt, members, position))
                    if reg.address > position[0]:
                        fmt.append(f"{(reg.address - position[0]) * 2}x")
                    fmt.append(reg.data_type.struct_char)
                    members.append(i)
                    position[0] = reg.end
                for fmt, members, _position in passes:
                    groups.append((swapped, struct.Struct("".join(fmt)), tuple(members)))
        post = tuple(
            (r.name, r.scale, r.offset, r.sentinels, r.data_type.is_float) for r in registers
        )
        return RequestDecoder(start, count, registers, tuple(groups), post, bits)

    def decode(self, words: Sequence[int]) -> tuple[dict[str, float], list[str]]:
        """Decode a response: ({name: value}, [names whose value is "not available"]).

        Raises DecodeError when the response has the wrong length.
        """
        if len(words) != self.count:
            raise DecodeError(
                f"response to the read of {self.count} at {self.start} has {len(words)} "
                f"value(s); registers {', '.join(r.name for r in self.registers)} "
                "cannot be decoded"
            )
        values: dict[str, float] = {}
        missing: list[str] = []
        if self._bits:
            for reg in self.registers:
                values[reg.name] = 1.0 if words[reg.address - self.start] else 0.0
            return values, missing
        raw = [0.0] * len(self.registers)
        data = words_to_bytes(words[: self.count])
        swapped_data = None
        for swapped, unpacker, indexes in self._groups:
            if swapped:
                if swapped_data is None:
                    swapped_data = _swap_pairs(data)
                source = swapped_data
            else:
                source = data
            for i, value in zip(indexes, unpacker.unpack_from(source), strict=True):
                raw[i] = value
        for (name, scale, offset, sentinels, is_float), value in zip(self._post, raw, strict=True):
            if value in sentinels or (is_float and not math.isfinite(value)):
                missing.append(name)
            elif scale == 1.0 and offset == 0.0:
                values[name] = float(value)
            else:
                values[name] = value * scale + offset
        return values, missing
