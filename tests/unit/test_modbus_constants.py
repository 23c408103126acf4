"""The Modbus protocol's numbers (emm.modbus) hang together, and nobody keeps other copies."""

from __future__ import annotations

import pytest

from emm import modbus, planner, registers

pytestmark = pytest.mark.timeout(10)


def test_every_read_function_code_has_a_limit_and_no_write_is_a_read() -> None:
    assert sorted(modbus.READ_LIMITS) == list(modbus.READ_FUNCTION_CODES) == [1, 2, 3, 4]
    assert set(modbus.BIT_FUNCTION_CODES) == {1, 2}
    assert {modbus.READ_LIMITS[fc] for fc in modbus.BIT_FUNCTION_CODES} == {2000}
    assert {modbus.READ_LIMITS[fc] for fc in (3, 4)} == {125}
    assert not modbus.WRITE_FUNCTION_CODES & set(modbus.READ_FUNCTION_CODES)


@pytest.mark.parametrize(
    ("code", "name"),
    [
        (1, "ILLEGAL FUNCTION"),
        (2, "ILLEGAL DATA ADDRESS"),
        (6, "SERVER DEVICE BUSY"),
        (11, "GATEWAY TARGET DEVICE FAILED TO RESPOND"),
        (7, "unknown exception"),
    ],
)
def test_exception_names(code: int, name: str) -> None:
    assert modbus.exception_name(code) == name


def test_transient_exception_codes_are_named_and_mean_later() -> None:
    transient = modbus.TRANSIENT_EXCEPTION_CODES
    assert transient == {5, 6, 10, 11}
    assert transient <= set(modbus.EXCEPTION_NAMES)


def test_the_core_keeps_no_copies_of_the_protocol_numbers() -> None:
    # planner and registers use emm.modbus's numbers; they define none of their own
    assert planner.MAX_REGISTERS_PER_READ is modbus.MAX_REGISTERS_PER_READ
    assert planner.MAX_BITS_PER_READ is modbus.MAX_BITS_PER_READ
    assert registers.READ_FUNCTION_CODES is modbus.READ_FUNCTION_CODES
    assert registers.BIT_FUNCTION_CODES is modbus.BIT_FUNCTION_CODES
