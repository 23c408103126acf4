"""emm.modbus.answer_violation: what breaks Modbus TCP in an answer to a read, in a few words;
and the simulator's violation fault as a scenario gives it."""

from __future__ import annotations

import pytest

from emm.errors import ConfigError
from emm.modbus import answer_violation
from simulator.faults import Violation, parse_fault

pytestmark = pytest.mark.timeout(10)


def mbap(tid: int, unit: int, pdu: bytes, *, length: int | None = None) -> bytes:
    size = len(pdu) + 1 if length is None else length
    return tid.to_bytes(2, "big") + b"\0\0" + size.to_bytes(2, "big") + bytes((unit,)) + pdu


READ_2 = mbap(5, 1, bytes((3, 0, 10, 0, 2)))  # FC3, 2 registers at 10
GOOD = mbap(5, 1, bytes((3, 4, 0, 1, 0, 2)))


@pytest.mark.parametrize(
    ("answer", "named"),
    [
        (GOOD, None),
        (b"", None),
        (mbap(5, 1, bytes((0x83, 2))), None),  # an exception answer is well formed
        (GOOD[:5], "short frame: 5 bytes, less than a header and a function code"),
        (mbap(6, 1, bytes((3, 4, 0, 1, 0, 2))), "transaction id 6 in the answer to transaction 5"),
        (GOOD[:2] + b"\0\1" + GOOD[4:], "protocol id 1 in the answer, not 0 (Modbus)"),
        (mbap(5, 2, bytes((3, 4, 0, 1, 0, 2))), "unit id 2 in the answer to unit 1"),
        (GOOD[:-2], "short frame: 11 bytes of the 13 its header announces"),
        (mbap(5, 1, bytes((4, 4, 0, 1, 0, 2))), "function code 4 in the answer to function code 3"),
        (mbap(5, 1, bytes((3, 6, 0, 1, 0, 2))), "byte count 6 but 4 bytes follow"),
        (mbap(5, 1, bytes((3, 2, 0, 1))), "byte count 2 for a read of 2, 4 expected"),
        (mbap(5, 1, bytes((3,))), "short frame: no byte count after function code 3"),
    ],
)
def test_answer_violation(answer: bytes, named: str | None) -> None:
    assert answer_violation(READ_2, answer) == named


def test_bit_reads_count_bytes_of_eight_bits() -> None:
    read_coils = mbap(1, 1, bytes((1, 0, 0, 0, 10)))  # 10 coils: 2 bytes
    assert answer_violation(read_coils, mbap(1, 1, bytes((1, 2, 0xFF, 0x03)))) is None
    assert answer_violation(read_coils, mbap(1, 1, bytes((1, 1, 0xFF)))) == (
        "byte count 1 for a read of 10, 2 expected"
    )


def test_violation_fault() -> None:
    fault = parse_fault({"kind": "violation", "violation": "byte_count", "rate": 0.5})
    assert (fault.kind, fault.violation, fault.rate) == ("violation", "byte_count", 0.5)
    with pytest.raises(ConfigError) as info:
        parse_fault({"kind": "violation", "violation": "crc"}, "s.toml: fault 1")
    assert str(info.value) == (
        "s.toml: fault 1: violation 'crc' is not one of transaction_id, byte_count, "
        "function_code, short_frame"
    )
    assert Violation("short_frame").what == "short_frame"
