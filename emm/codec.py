"""Turning register words into values and back.

The worker decodes with `RequestDecoder` (one compiled decoder per planned read request, so a
whole response is unpacked with a few `struct` calls; a meter type's `Plan` builds them once); the
simulator encodes with `encode`, the exact inverse, so a byte-order mistake cannot hide on both
sides.

Byte/word orders are handled with two views of a response: the bytes as they arrived and the
bytes swapped within each 16-bit word. Every order is one of those views read big or little
endian: ABCD = arrived/big, DCBA = arrived/little, BADC = swapped/big, CDAB = swapped/little.

Numbers take the fast path: one `struct` pass per view, then scale and offset. A half (int8 or
uint8, `DataType.is_half`) is unpacked as its whole register (as sent: the high byte first) and
its byte taken; a register with a `scale_register` is multiplied by ten to the power of that
register's value in the same response (a SunSpec scale factor), so a value and its scale factor
always come from the same reading. Text registers (strings, enums, bitfields) are decoded apart
from the numbers, by `RequestDecoder.decode_text`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from emm.errors import DecodeError
from emm.registers import SCALE_FACTOR_RANGE, DataType, Order, Register

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


def encode(value: float, register: Register, scale_factor: int = 0) -> list[int]:
    """The register words a device sends for `value` (the scaled, physical value); with a
    `scale_register`, `scale_factor` is the power of ten its scale-factor register holds.

    Integers are rounded to the nearest raw step; values outside the type's range raise
    DecodeError rather than wrapping around.
    """
    dtype = register.data_type
    if dtype is DataType.BOOL:
        return [1 if value else 0]
    raw: float | int = (value - register.offset) / register.scale
    if register.scale_register:
        raw = raw * 10**-scale_factor if scale_factor <= 0 else raw / 10**scale_factor
    if not dtype.is_float:
        raw = round(raw)
    return encode_raw(raw, register)


def encode_raw(raw: float | int, register: Register) -> list[int]:
    """The register words for an unscaled value (or a raw sentinel pattern as its type)."""
    dtype = register.data_type
    if dtype.is_half:
        signed = dtype in (DataType.INT8_HIGH, DataType.INT8_LOW)
        if not (-128 if signed else 0) <= int(raw) <= (127 if signed else 255):
            raise DecodeError(
                f"register {register.name!r}: {raw!r} does not fit a {dtype.name.lower()}"
            )
        byte = int(raw) & 0xFF
        high = dtype in (DataType.UINT8_HIGH, DataType.INT8_HIGH)
        return [byte << 8 if high else byte]
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


def encode_text(text: str, register: Register) -> list[int]:
    """The register words of a text register's value: a string padded with NULs, an enum's
    name as its number, a bitfield's comma-separated set names as its bits."""
    if register.data_type is DataType.STRING:
        data = text.encode()
        if len(data) > 2 * register.length:
            raise DecodeError(f"register {register.name!r}: {text!r} is longer than the string")
        data = data.ljust(2 * register.length, b"\0")
        if _VIEW[register.order][0]:
            data = _swap_pairs(data)
        return list(_words_struct(register.length).unpack(data))
    if register.enum:
        numbers = {name: number for number, name in register.enum}
        if text not in numbers:
            raise DecodeError(f"register {register.name!r}: {text!r} is not one of its names")
        return encode_raw(numbers[text], register)
    numbers = {name: bit for bit, name in register.bits}
    raw = 0
    for name in filter(None, text.split(",")):
        bit = numbers.get(name)
        if bit is None and name.startswith("bit") and name[3:].isdigit():
            bit = int(name[3:])
        if bit is None:
            raise DecodeError(f"register {register.name!r}: {name!r} is not one of its bits")
        raw |= 1 << bit
    if register.data_type in _SIGNED and raw >= 1 << (register.data_type.bits - 1):
        raw -= 1 << register.data_type.bits
    return encode_raw(raw, register)


def decode(
    words: Sequence[int], register: Register, scale_factor: int | None = None
) -> float | None:
    """Decode one number from exactly its own words; None when it is a "not available" value.

    A register with a `scale_register` needs the `scale_factor` its scale-factor register
    holds (None: that register read "not available", so this value is too).
    """
    if register.is_text:
        raise DecodeError(f"register {register.name!r} is text: decode it with decode_text")
    _check_length(words, register)
    if not register.scale_register:
        decoder = RequestDecoder.build(register.address, register.words, (register,))
        values, _missing = decoder.decode(words)
        return values.get(register.name)
    if scale_factor is None:
        return None
    # decoded beside a scale-factor register of its own, one register before it
    sf = Register(
        register.scale_register, register.address - 1, register.function_code, DataType.INT16
    )
    if sf.address < 0:
        sf = Register(sf.name, register.end, register.function_code, DataType.INT16)
    both = (sf, register) if sf.address < register.address else (register, sf)
    first = both[0].address
    image = [0] * (register.words + 1)
    image[register.address - first : register.end - first] = words
    image[sf.address - first] = scale_factor & 0xFFFF
    values, _missing = RequestDecoder.build(first, len(image), both).decode(image)
    return values.get(register.name)


def decode_text(words: Sequence[int], register: Register) -> str | None:
    """Decode one text register from exactly its own words; None when "not available"."""
    _check_length(words, register)
    return _text(register, words)


def _check_length(words: Sequence[int], register: Register) -> None:
    if len(words) != register.words:
        raise DecodeError(
            f"register {register.name!r} at {register.address}: expected "
            f"{register.words} word(s) for a {register.data_type.name.lower()}, "
            f"got {len(words)}"
        )


_SIGNED = frozenset(
    {DataType.INT16, DataType.INT32, DataType.INT64, DataType.INT8_HIGH, DataType.INT8_LOW}
)


def _half(register: Register, word: int) -> int:
    """The byte of `word` a half register holds, signed for int8."""
    dtype = register.data_type
    byte = word >> 8 if dtype in (DataType.UINT8_HIGH, DataType.INT8_HIGH) else word & 0xFF
    return byte - 256 if dtype in _SIGNED and byte >= 128 else byte


def _integer(register: Register, words: Sequence[int]) -> int:
    """The raw integer of a register's own words (its order and type applied)."""
    if register.data_type.is_half:
        return _half(register, words[0])
    data = words_to_bytes(words)
    swapped, endian = _VIEW[register.order]
    if swapped:
        data = _swap_pairs(data)
    (value,) = struct.unpack(endian + register.data_type.struct_char, data)
    return int(value)


def _text(register: Register, words: Sequence[int]) -> str | None:
    """A text register's value from its own words; None when "not available"."""
    if register.data_type is DataType.STRING:
        data = words_to_bytes(words)
        if _VIEW[register.order][0]:
            data = _swap_pairs(data)
        # a C string: up to its first NUL; SunSpec pads with NULs, others with spaces
        text = data.split(b"\0", 1)[0].decode("utf-8", errors="replace").rstrip(" ")
        return text or None
    raw = _integer(register, words)
    if raw in register.sentinels:
        return None
    if register.enum:
        return dict(register.enum).get(raw, str(raw))
    unsigned = raw & ((1 << register.data_type.bits) - 1)
    names = dict(register.bits)
    return ",".join(
        names.get(bit, f"bit{bit}") for bit in range(register.data_type.bits) if unsigned >> bit & 1
    )


def _power_of_ten(value: float, scale_factor: int) -> float:
    """`value` times ten to the `scale_factor`, correctly rounded (a division for a negative
    power: 2301 x 10^-1 is 230.1, where 2301 * 0.1 is 230.10000000000002)."""
    if scale_factor < 0:
        return value / 10**-scale_factor
    return value * 10**scale_factor


@dataclass(frozen=True)
class RequestDecoder:
    """Decodes every register of one read request from its response in bulk.

    Build it once per (request, registers) with `build` (a meter type's `Plan` holds one per
    planned request), then call `decode` per read (and `decode_text` when `has_text`).
    """

    start: int
    count: int
    registers: tuple[Register, ...]
    # (swapped view?, Struct covering the response, numeric index for each unpacked value)
    _groups: tuple[tuple[bool, struct.Struct, tuple[int, ...]], ...] = field(repr=False)
    # name, scale, offset, sentinels, is_float — for each plain number, first in numeric order
    _post: tuple[tuple[str, float, float, frozenset[float], bool], ...] = field(repr=False)
    _bits: bool = field(repr=False)
    # halves and scaled numbers, after the plain ones: (numeric index, register, numeric
    # index of its scale factor: -1 none, -2 not in this request)
    _special: tuple[tuple[int, Register, int], ...] = field(repr=False, default=())
    _text: tuple[Register, ...] = field(repr=False, default=())

    @property
    def has_text(self) -> bool:
        """Whether the request holds text registers (`decode_text`)."""
        return bool(self._text)

    @staticmethod
    def build(start: int, count: int, registers: tuple[Register, ...]) -> RequestDecoder:
        """Compile the decoder for a request reading `count` words (or bits) from `start`.

        A register whose scale-factor register is not in the request reads "not available".
        """
        for reg in registers:
            if reg.address < start or reg.end > start + count:
                raise DecodeError(
                    f"register {reg.name!r} at {reg.address} lies outside the request "
                    f"{start}..{start + count - 1}"
                )
        bits = bool(registers) and registers[0].data_type is DataType.BOOL
        text = tuple(r for r in registers if r.is_text)
        plain = [r for r in registers if not r.is_text and _is_plain(r)]
        special = [r for r in registers if not r.is_text and not _is_plain(r)]
        numeric = plain + special
        groups = [] if bits else _groups(start, numeric)
        post = tuple(
            (r.name, r.scale, r.offset, r.sentinels, r.data_type.is_float)
            for r in (registers if bits else plain)
        )
        index = {r.name: i for i, r in enumerate(numeric)}
        extra = tuple(
            (
                len(plain) + i,
                r,
                -1 if not r.scale_register else index.get(r.scale_register, -2),
            )
            for i, r in enumerate(special)
        )
        return RequestDecoder(start, count, registers, tuple(groups), post, bits, extra, text)

    def decode(self, words: Sequence[int]) -> tuple[dict[str, float], list[str]]:
        """Decode a response's numbers: ({name: value}, [names whose value is "not
        available"]). Text registers are left to `decode_text`.

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
        raw = [0.0] * (len(self._post) + len(self._special))
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
        # zip stops at the plain numbers: the special ones follow them in `raw`
        for (name, scale, offset, sentinels, is_float), value in zip(self._post, raw):  # noqa: B905
            if value in sentinels or (is_float and not math.isfinite(value)):
                missing.append(name)
            elif scale == 1.0 and offset == 0.0:
                values[name] = float(value)
            else:
                values[name] = value * scale + offset
        if self._special:
            self._decode_special(raw, values, missing)
        return values, missing

    def _decode_special(
        self, raw: list[float], values: dict[str, float], missing: list[str]
    ) -> None:
        """The halves and the numbers scaled by a scale-factor register of this response."""
        for i, reg, sf_index in self._special:
            value = raw[i]
            if reg.data_type.is_half:
                value = _half(reg, int(value))
            if value in reg.sentinels or (reg.data_type.is_float and not math.isfinite(value)):
                missing.append(reg.name)
                continue
            if sf_index != -1:
                sf = int(raw[sf_index]) if sf_index >= 0 else None
                if sf is None or sf not in SCALE_FACTOR_RANGE:  # 0x8000 or nonsense: no value
                    missing.append(reg.name)
                    continue
                value = _power_of_ten(value, sf)
            if reg.scale == 1.0 and reg.offset == 0.0:
                values[reg.name] = float(value)
            else:
                values[reg.name] = value * reg.scale + reg.offset

    def decode_text(self, words: Sequence[int]) -> tuple[dict[str, str], list[str]]:
        """Decode a response's text registers: ({name: text}, [names "not available"])."""
        text: dict[str, str] = {}
        missing: list[str] = []
        for reg in self._text:
            value = _text(reg, words[reg.address - self.start : reg.end - self.start])
            if value is None:
                missing.append(reg.name)
            else:
                text[reg.name] = value
        return text, missing


def _is_plain(register: Register) -> bool:
    """Whether a number takes the fast path: no half, no scale-factor register."""
    return not register.data_type.is_half and not register.scale_register


def _groups(
    start: int, registers: list[Register]
) -> list[tuple[bool, struct.Struct, tuple[int, ...]]]:
    """One `struct` pass per view (and per overlap) over the response, unpacking each number."""
    groups = []
    by_view: dict[tuple[bool, str], list[int]] = {}
    for index, reg in enumerate(registers):
        # a half is its whole register as sent, whatever its order says
        view = _VIEW[Order.ABCD] if reg.data_type.is_half else _VIEW[reg.order]
        by_view.setdefault(view, []).append(index)
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
    return groups
