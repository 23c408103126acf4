"""Where each virtual meter is reached: which port (counted from the base port) and unit id.

Gateway mode puts up to 247 meters behind one port as unit ids 1..247 and moves to the next
port for the next 247; `--port-per-meter` gives each meter its own port, answering any unit id.
Without `--meters` there is one meter answering any unit id, as the original simulator did.
"""

from __future__ import annotations

from dataclasses import dataclass

from emm.errors import ConfigError
from simulator.server import ANY_UNIT

MAX_UNITS_PER_PORT = 247  # unit ids 1..247 are the addressable Modbus devices


@dataclass(frozen=True, slots=True)
class Placement:
    """Meter `index` (also its seed) listens on the `slot`-th port with `unit_id`."""

    index: int
    slot: int
    unit_id: int  # ANY_UNIT: answers every unit id

    @property
    def slave_address(self) -> int:
        """The unit id to configure for reading it."""
        return 1 if self.unit_id == ANY_UNIT else self.unit_id

    @property
    def description(self) -> str:
        return f"sim-{self.index}"


def place(
    meters: int | None,
    *,
    port_per_meter: bool = False,
    units_per_port: int = MAX_UNITS_PER_PORT,
) -> list[Placement]:
    """The placements of `meters` meters (None: the single any-unit meter)."""
    if not 1 <= units_per_port <= MAX_UNITS_PER_PORT:
        raise ConfigError(f"units per port must be 1..{MAX_UNITS_PER_PORT}, got {units_per_port}")
    if meters is None:
        return [Placement(0, 0, ANY_UNIT)]
    if meters < 1:
        raise ConfigError(f"--meters must be at least 1, got {meters}")
    if port_per_meter:
        return [Placement(i, i, ANY_UNIT) for i in range(meters)]
    return [Placement(i, i // units_per_port, 1 + i % units_per_port) for i in range(meters)]


def port_count(placements: list[Placement]) -> int:
    return 1 + max(p.slot for p in placements)


def check_ports(base_port: int, placements: list[Placement]) -> None:
    """The consecutive ports from `base_port` must exist (base 0: each port picked freely)."""
    last = base_port + port_count(placements) - 1
    if base_port and last > 65535:
        raise ConfigError(
            f"{port_count(placements)} ports from {base_port} would go past 65535; "
            "use a lower port or fewer meters"
        )
