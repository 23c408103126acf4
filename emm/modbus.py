"""The Modbus protocol's numbers, stated once: function codes, request limits, exception codes.

Pure data from the Modbus Application Protocol Specification V1.1b3 (function codes in 6.1-6.4,
limits in the request PDUs of 6.1-6.4, exception codes in 7); the worker, the simulator and
the planner take them from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

# Reads: 1 coils and 2 discrete inputs answer bits, 3 holding and 4 input registers answer words.
READ_COILS = 1
READ_DISCRETE_INPUTS = 2
READ_HOLDING_REGISTERS = 3
READ_INPUT_REGISTERS = 4
READ_FUNCTION_CODES = (
    READ_COILS,
    READ_DISCRETE_INPUTS,
    READ_HOLDING_REGISTERS,
    READ_INPUT_REGISTERS,
)
BIT_FUNCTION_CODES = (READ_COILS, READ_DISCRETE_INPUTS)

# The most one request may ask for (the response must fit a 253-byte PDU).
MAX_REGISTERS_PER_READ = 125  # function codes 3 and 4
MAX_BITS_PER_READ = 2000  # function codes 1 and 2
READ_LIMITS: Mapping[int, int] = MappingProxyType(
    {
        READ_COILS: MAX_BITS_PER_READ,
        READ_DISCRETE_INPUTS: MAX_BITS_PER_READ,
        READ_HOLDING_REGISTERS: MAX_REGISTERS_PER_READ,
        READ_INPUT_REGISTERS: MAX_REGISTERS_PER_READ,
    }
)

# Writes (single coil, single register, multiple coils, multiple registers, mask write,
# read/write multiple): the system never sends them, and the simulator refuses them.
WRITE_FUNCTION_CODES = frozenset({5, 6, 15, 16, 22, 23})

ILLEGAL_FUNCTION = 1
ILLEGAL_DATA_ADDRESS = 2
ILLEGAL_DATA_VALUE = 3
SERVER_DEVICE_FAILURE = 4
ACKNOWLEDGE = 5
SERVER_DEVICE_BUSY = 6
MEMORY_PARITY_ERROR = 8
GATEWAY_PATH_UNAVAILABLE = 10
GATEWAY_TARGET_DEVICE_FAILED_TO_RESPOND = 11

EXCEPTION_NAMES: Mapping[int, str] = MappingProxyType(
    {
        ILLEGAL_FUNCTION: "ILLEGAL FUNCTION",
        ILLEGAL_DATA_ADDRESS: "ILLEGAL DATA ADDRESS",
        ILLEGAL_DATA_VALUE: "ILLEGAL DATA VALUE",
        SERVER_DEVICE_FAILURE: "SERVER DEVICE FAILURE",
        ACKNOWLEDGE: "ACKNOWLEDGE",
        SERVER_DEVICE_BUSY: "SERVER DEVICE BUSY",
        MEMORY_PARITY_ERROR: "MEMORY PARITY ERROR",
        GATEWAY_PATH_UNAVAILABLE: "GATEWAY PATH UNAVAILABLE",
        GATEWAY_TARGET_DEVICE_FAILED_TO_RESPOND: "GATEWAY TARGET DEVICE FAILED TO RESPOND",
    }
)

# Exception codes worth another try within the tick: ACKNOWLEDGE and SERVER DEVICE BUSY mean
# "later", the gateway codes are a gateway that could not reach the device this time.
TRANSIENT_EXCEPTION_CODES = frozenset(
    {
        ACKNOWLEDGE,
        SERVER_DEVICE_BUSY,
        GATEWAY_PATH_UNAVAILABLE,
        GATEWAY_TARGET_DEVICE_FAILED_TO_RESPOND,
    }
)


def exception_name(code: int) -> str:
    """The specification's name of exception `code` ("unknown exception" for others)."""
    return EXCEPTION_NAMES.get(code, "unknown exception")


_MBAP_HEADER = 7  # transaction id, protocol id, length, unit id


def answer_violation(request: bytes, answer: bytes) -> str | None:
    """What breaks the protocol in `answer`, the bytes a device sent back (Modbus TCP, MBAP
    framing) to our read `request`, in a few words; None when nothing came or nothing we can
    name is wrong. A client library drops such an answer and waits, so without this the read
    only looks unanswered."""
    if not answer or len(request) < _MBAP_HEADER + 5:
        return None
    if len(answer) < _MBAP_HEADER + 1:
        return f"short frame: {len(answer)} bytes, less than a header and a function code"
    tid, protocol, length, unit = _unpack_mbap(answer)
    want_tid, _, _, want_unit = _unpack_mbap(request)
    function_code = request[_MBAP_HEADER]
    count = int.from_bytes(request[_MBAP_HEADER + 3 : _MBAP_HEADER + 5], "big")
    if tid != want_tid:
        return f"transaction id {tid} in the answer to transaction {want_tid}"
    if protocol != 0:
        return f"protocol id {protocol} in the answer, not 0 (Modbus)"
    if unit != want_unit:
        return f"unit id {unit} in the answer to unit {want_unit}"
    if len(answer) < 6 + length:
        return f"short frame: {len(answer)} bytes of the {6 + length} its header announces"
    got = answer[_MBAP_HEADER]
    if got & 0x7F != function_code:
        return f"function code {got} in the answer to function code {function_code}"
    if got & 0x80:
        return None  # an exception answer: well formed
    if length < 3:
        return f"short frame: no byte count after function code {got}"
    byte_count = answer[_MBAP_HEADER + 1]
    follow = length - 3  # after unit id, function code and byte count
    if byte_count != follow:
        return f"byte count {byte_count} but {follow} bytes follow"
    want = (count + 7) // 8 if function_code in BIT_FUNCTION_CODES else 2 * count
    if byte_count != want:
        return f"byte count {byte_count} for a read of {count}, {want} expected"
    return None


def _unpack_mbap(frame: bytes) -> tuple[int, int, int, int]:
    return (
        int.from_bytes(frame[0:2], "big"),
        int.from_bytes(frame[2:4], "big"),
        int.from_bytes(frame[4:6], "big"),
        frame[6],
    )
