"""The Modbus TCP server: a small asyncio server (MBAP framing, or RTU frames over TCP) answering
from the virtual meters, accepting at most `max_connections` connections per port as a gateway
does.

It is our own rather than pymodbus's because faults need the connection itself: a reset must
abort the TCP connection and a rebooting meter must refuse new ones, and pymodbus's datastore
callback (`async_getValues`) cannot reach the transport. Being small it is also fast: a read is
a header unpack, a slice of the meter's cached image and a write.

What is answered:
- function codes 1-4: the meter's values; addresses it does not have give exception 2;
  a count outside 1..125 (1..2000 bits) or a malformed request gives exception 3;
- writes (5, 6, 15, 16, 22, 23) and every other function code: exception 1 (ILLEGAL FUNCTION),
  writes are counted in `Stats.writes_refused` since the system must never write to a device;
- a unit id no meter answers to: exception 10 (GATEWAY PATH UNAVAILABLE), as a gateway does;
- faults (`simulator.faults`) come before the read: a rebooting meter is refused (or, behind a
  port shared with meters that are up, answers exception 11), then timeouts, resets and
  exceptions, then holes (exception 2); latency delays whatever the answer is.

Connections: with `max_connections` N, a connection beyond the N open ones is closed at once and
counted in `Stats.refused`; `Stats.peaks` holds the most connections open at once, per port.
Framing `rtu`: each request and answer is an RTU frame (unit id, PDU, CRC-16 as pymodbus's RTU
framer computes it) on the TCP stream, as an RS485 gateway in transparent mode passes them on;
a frame with a wrong CRC is not answered, one that cannot be a request resets the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, cast

from pymodbus.framer import FramerRTU

from emm.modbus import (
    GATEWAY_PATH_UNAVAILABLE,
    GATEWAY_TARGET_DEVICE_FAILED_TO_RESPOND,
    ILLEGAL_DATA_ADDRESS,
    ILLEGAL_DATA_VALUE,
    ILLEGAL_FUNCTION,
    READ_LIMITS,
    WRITE_FUNCTION_CODES,
)
from simulator.faults import RESET, TIMEOUT, FaultPlan, Violation

log = logging.getLogger(__name__)

ANY_UNIT = -1
Framing = Literal["tcp", "rtu"]

_MBAP = struct.Struct(">HHHB")  # transaction id, protocol id (0), length of what follows, unit id
_READ = struct.Struct(">BHH")  # function code, address, count
_LINGER_RESET = struct.pack("ii", 1, 0)  # close with RST instead of FIN


class Device(Protocol):
    def read_bytes(self, function_code: int, address: int, count: int, t_s: float) -> bytes | int:
        """Response data bytes, or a Modbus exception code."""
        ...


@dataclass
class Stats:
    """What the server did, for tests and the shutdown log line."""

    reads: int = 0
    writes_refused: int = 0
    dropped: int = 0
    resets: int = 0
    connections: int = 0
    refused: int = 0  # connections beyond a port's max_connections, closed at once
    exceptions: Counter[int] = field(default_factory=Counter)
    peaks: dict[int, int] = field(default_factory=dict)  # port -> most connections open at once
    refused_by_port: Counter[int] = field(default_factory=Counter)
    # port -> seconds spent answering: from a request's arrival to its answer's send, summed (a
    # gateway's own measure of how busy its line was; one connection's requests never overlap)
    busy_s: dict[int, float] = field(default_factory=dict)

    def counts(self) -> dict[str, float]:
        """The totals for the summary lines."""
        return {
            "reads": self.reads,
            "exceptions": sum(self.exceptions.values()),
            "dropped": self.dropped,
            "resets": self.resets,
            "connections": self.connections,
        }

    def as_dict(self) -> dict[str, object]:
        """For the stats file (JSON)."""
        return {
            "reads": self.reads,
            "writes_refused": self.writes_refused,
            "connections": self.connections,
            "refused": self.refused,
            "peak_connections": {str(port): peak for port, peak in sorted(self.peaks.items())},
            "refused_by_port": {str(p): n for p, n in sorted(self.refused_by_port.items())},
            "exceptions": {str(code): n for code, n in sorted(self.exceptions.items())},
            "busy_s": {str(port): round(s, 6) for port, s in sorted(self.busy_s.items())},
        }


def _exception(fc: int, code: int) -> bytes:
    return bytes((fc | 0x80, code))


class SimulatedContext:
    """The meters behind one port, by unit id (ANY_UNIT: any), and how each request is answered."""

    def __init__(
        self,
        devices: Mapping[int, Device],
        clock: Callable[[], float] = time.time,
        faults: Mapping[int, FaultPlan] | None = None,
        stats: Stats | None = None,
    ) -> None:
        self.devices = dict(devices)
        self.clock = clock
        self.faults = {unit: plan for unit, plan in (faults or {}).items() if not plan.quiet}
        self.stats = stats if stats is not None else Stats()
        # The port refuses connections only while every meter behind it is rebooting.
        self.can_refuse = bool(self.devices) and all(
            unit in self.faults and self.faults[unit].reboots for unit in self.devices
        )

    @property
    def reads(self) -> int:
        return self.stats.reads

    @property
    def writes_refused(self) -> int:
        return self.stats.writes_refused

    def refusing(self, t_s: float) -> bool:
        """Whether the port is down (every meter behind it rebooting) at `t_s`."""
        return self.can_refuse and all(plan.rebooting(t_s) for plan in self.faults.values())

    def handle(self, unit: int, pdu: bytes) -> tuple[bytes | str | Garbled, float]:
        """The response PDU to `pdu` (or TIMEOUT / RESET, or an answer to garble) and how long
        to wait before sending it."""
        stats = self.stats
        fc = pdu[0]
        device = self.devices.get(unit)
        if device is None:
            device = self.devices.get(ANY_UNIT)
            if device is None:
                stats.exceptions[GATEWAY_PATH_UNAVAILABLE] += 1
                return _exception(fc, GATEWAY_PATH_UNAVAILABLE), 0.0
            plan = self.faults.get(ANY_UNIT)
        else:
            plan = self.faults.get(unit)
        if fc not in READ_LIMITS:
            if fc in WRITE_FUNCTION_CODES:
                stats.writes_refused += 1
                log.warning("refused a write (function code %d, unit %d)", fc, unit)
            stats.exceptions[ILLEGAL_FUNCTION] += 1
            return _exception(fc, ILLEGAL_FUNCTION), 0.0
        t_s = self.clock()
        delay = 0.0
        violation = None
        if plan is not None:
            if plan.rebooting(t_s):
                if self.refusing(t_s):
                    stats.resets += 1
                    return RESET, 0.0
                stats.exceptions[GATEWAY_TARGET_DEVICE_FAILED_TO_RESPOND] += 1
                return _exception(fc, GATEWAY_TARGET_DEVICE_FAILED_TO_RESPOND), 0.0
            delay = plan.delay_s(t_s)
            action = plan.action(t_s)
            if action is not None:
                if action == TIMEOUT:
                    stats.dropped += 1
                    return TIMEOUT, 0.0
                if action == RESET:
                    stats.resets += 1
                    return RESET, 0.0
                if isinstance(action, Violation):
                    violation = action
                else:
                    assert isinstance(action, int)
                    stats.exceptions[action] += 1
                    return _exception(fc, action), delay
        if len(pdu) != 5:
            stats.exceptions[ILLEGAL_DATA_VALUE] += 1
            return _exception(fc, ILLEGAL_DATA_VALUE), delay
        _, address, count = _READ.unpack(pdu)
        if not 1 <= count <= READ_LIMITS[fc] or address + count > 65536:
            stats.exceptions[ILLEGAL_DATA_VALUE] += 1
            return _exception(fc, ILLEGAL_DATA_VALUE), delay
        if plan is not None and plan.in_hole(fc, address, count, t_s):
            stats.exceptions[ILLEGAL_DATA_ADDRESS] += 1
            return _exception(fc, ILLEGAL_DATA_ADDRESS), delay
        data = device.read_bytes(fc, address, count, t_s)
        if isinstance(data, int):
            stats.exceptions[data] += 1
            return _exception(fc, data), delay
        stats.reads += 1
        reply = bytes((fc, len(data))) + data
        if violation is not None:
            return Garbled(violation.what, reply), delay
        return reply, delay


# a read function code's neighbour: the answer of the wrong kind a garbled gateway gives
_OTHER_FUNCTION = {1: 2, 2: 1, 3: 4, 4: 3}


@dataclass(frozen=True, slots=True)
class Garbled:
    """A correct answer `pdu`, to be sent against the protocol as `what` says (a Violation)."""

    what: str
    pdu: bytes

    def mbap_frame(self, tid: int, unit: int) -> bytes:
        """The answer as a Modbus TCP frame, garbled."""
        pdu = self.pdu
        if self.what == "function_code":
            pdu = bytes((_OTHER_FUNCTION[pdu[0]],)) + pdu[1:]
        elif self.what == "byte_count":
            pdu = pdu[:1] + bytes(((pdu[1] + 2) & 0xFF,)) + pdu[2:]
        elif self.what == "transaction_id":
            tid = (tid + 1) & 0xFFFF
        frame = _MBAP.pack(tid, 0, len(pdu) + 1, unit) + pdu
        return frame[:-2] if self.what == "short_frame" else frame


class _Connection(asyncio.Protocol):
    """One client connection: splits the stream into frames and answers each (the framing is
    a subclass's)."""

    def __init__(self, server: ModbusTcpServer) -> None:
        self.server = server
        self.context = server.context
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's are not subclasses of asyncio.Transport)
        self.transport = cast(asyncio.Transport, transport)
        server, stats = self.server, self.context.stats
        if server.max_connections and len(server.connections) >= server.max_connections:
            stats.refused += 1
            stats.refused_by_port[server.port] += 1
            log.warning(
                "port %d: connection refused, %d open already (--max-connections %d)",
                server.port,
                len(server.connections),
                server.max_connections,
            )
            self.transport.close()
            self.transport = None
            return
        server.connections.add(self)
        stats.connections += 1
        stats.peaks[server.port] = max(stats.peaks.get(server.port, 0), len(server.connections))

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None

    def _answer(self, frame: bytes, delay: float, arrived: float) -> None:
        if delay > 0:
            self._send_at(frame, arrived + delay, arrived)
        else:
            self._send(frame, arrived)

    def _send_at(self, frame: bytes, due: float, arrived: float) -> None:
        """Send `frame` once `due` (monotonic) has passed: never before. uvloop's timers have
        millisecond resolution and may fire a fraction of one early."""
        left = due - time.monotonic()
        if left > 0:
            asyncio.get_running_loop().call_later(left, self._send_at, frame, due, arrived)
        else:
            self._send(frame, arrived)

    def _send(self, frame: bytes, arrived: float) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)
            busy = self.context.stats.busy_s
            port = self.server.port
            busy[port] = busy.get(port, 0.0) + time.monotonic() - arrived

    def reset(self) -> None:
        """Drop the connection with a TCP reset, as a device that crashed or rebooted does."""
        transport = self.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        transport.abort()


class _MbapConnection(_Connection):
    """Modbus TCP: MBAP-headed frames."""

    def data_received(self, data: bytes) -> None:
        arrived = time.monotonic()
        buffer = self.buffer + data if self.buffer else data
        position = 0
        size = len(buffer)
        while size - position >= 8:
            tid, protocol, length, unit = _MBAP.unpack_from(buffer, position)
            if protocol != 0 or not 2 <= length <= 254:
                # Not Modbus TCP (or out of step with the stream): nothing sensible to answer.
                self.reset()
                return
            end = position + 6 + length
            if end > size:
                break
            pdu = buffer[position + 7 : end]
            position = end
            reply, delay = self.context.handle(unit, pdu)
            if isinstance(reply, Garbled):
                self._answer(reply.mbap_frame(tid, unit), delay, arrived)
                continue
            if not isinstance(reply, bytes):
                if reply == RESET:
                    self.reset()
                    return
                continue  # TIMEOUT: never answered
            self._answer(_MBAP.pack(tid, 0, len(reply) + 1, unit) + reply, delay, arrived)
        self.buffer = buffer[position:]


class _RtuConnection(_Connection):
    """RTU frames over TCP: unit id, PDU, CRC."""

    def data_received(self, data: bytes) -> None:
        arrived = time.monotonic()
        buffer = self.buffer + data if self.buffer else data
        position = 0
        size = len(buffer)
        while size - position >= _RTU_MIN:
            length = _rtu_request_length(buffer, position)
            if length is None:
                self.reset()  # no request we know: out of step with the stream
                return
            end = position + length
            if end > size:
                break
            frame = buffer[position : end - 2]
            crc = int.from_bytes(buffer[end - 2 : end], "big")
            position = end
            if not FramerRTU.check_CRC(frame, crc):
                continue  # a serial device ignores a garbled frame
            unit, pdu = frame[0], frame[1:]
            reply, delay = self.context.handle(unit, pdu)
            if isinstance(reply, Garbled):
                reply = reply.pdu  # no transaction to garble: violations are Modbus TCP's
            if not isinstance(reply, bytes):
                if reply == RESET:
                    self.reset()
                    return
                continue
            answer = bytes((unit,)) + reply
            check = FramerRTU.compute_CRC(answer).to_bytes(2, "big")
            self._answer(answer + check, delay, arrived)
        self.buffer = buffer[position:]


_RTU_MIN = 8  # the shortest request: unit, function code, four bytes, CRC
_RTU_FIXED = {1: 8, 2: 8, 3: 8, 4: 8, 5: 8, 6: 8}  # reads and single writes


def _rtu_request_length(buffer: bytes, position: int) -> int | None:
    """The length of the RTU request at `position` (at least 8 bytes there), None if its
    function code is not one a request can have here."""
    fc = buffer[position + 1]
    if fc in _RTU_FIXED:
        return _RTU_FIXED[fc]
    if fc in (15, 16):  # multiple writes: unit, fc, address, quantity, byte count, data, CRC
        return 9 + buffer[position + 6]
    return None


class ModbusTcpServer:
    """Serves one SimulatedContext on host:port; port 0 picks a free port (see `port`).

    While the context says the port is refusing (its meters reboot), the listening socket is
    closed and open connections are reset; it listens again when the reboot is over.
    `max_connections` 0 accepts any number of connections.
    """

    def __init__(
        self,
        context: SimulatedContext,
        host: str,
        port: int,
        *,
        poll_s: float = 0.05,
        max_connections: int = 0,
        framing: Framing = "tcp",
    ) -> None:
        self.context = context
        self.host = host
        self.port = port
        self.poll_s = poll_s
        self.max_connections = max_connections
        self.framing = framing
        self.connections: set[_Connection] = set()
        self._listener: asyncio.Server | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._started = False

    async def start(self) -> None:
        """Bind the port (raises OSError when it is taken) and start answering."""
        if self._started:
            return
        self._started = True
        await self._listen()
        if self.context.can_refuse:
            if self.context.refusing(self.context.clock()):
                self._stop_listening()
            self._watcher = asyncio.create_task(self._watch(), name=f"reboots:{self.port}")

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        protocol = _MbapConnection if self.framing == "tcp" else _RtuConnection
        self._listener = await loop.create_server(
            lambda: protocol(self), self.host, self.port, reuse_address=True, backlog=512
        )
        if self.port == 0:
            self.port = self._listener.sockets[0].getsockname()[1]

    def _stop_listening(self, *, reset: bool = True) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for connection in list(self.connections):
            if reset:
                connection.reset()
            elif connection.transport is not None:
                connection.transport.abort()

    async def _watch(self) -> None:
        """Follow the reboot windows: stop listening while the port is down, then listen again."""
        while True:
            await asyncio.sleep(self.poll_s)
            down = self.context.refusing(self.context.clock())
            if down and self._listener is not None:
                log.info("port %d refuses connections (rebooting)", self.port)
                self._stop_listening()
            elif not down and self._listener is None:
                try:
                    await self._listen()
                    log.info("port %d accepts connections again", self.port)
                except OSError as exc:
                    log.warning("port %d cannot listen again yet: %s", self.port, exc)

    async def shutdown(self) -> None:
        """Stop listening and drop every connection."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        listener = self._listener
        self._stop_listening(reset=False)
        if listener is not None:
            await listener.wait_closed()
