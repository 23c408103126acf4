"""emm.planner: the fewest read requests within a device's limits; pairing them with registers;
which poll classes are due at a tick."""

from __future__ import annotations

import itertools
import random
from bisect import bisect_left
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emm.errors import ConfigError
from emm.planner import (
    DAY_MS,
    ReadLimits,
    ReadRequest,
    assign,
    daily_due,
    daily_moment_ms,
    due_classes,
    plan,
    tick_index,
)
from emm.profiles import shipped_profile
from emm.registers import DataType, Register

pytestmark = pytest.mark.timeout(60)

FAST = settings(max_examples=200, deadline=None)
WIDTH = {1: DataType.INT16, 2: DataType.INT32, 4: DataType.INT64}


def word_reg(address: int, width: int = 1, fc: int = 3, name: str | None = None) -> Register:
    return Register(name or f"r{fc}_{address}_{width}", address, fc, WIDTH[width])


def bit_reg(address: int, fc: int = 1) -> Register:
    return Register(f"b{fc}_{address}", address, fc, DataType.BOOL)


def spans(requests: list[ReadRequest]) -> list[tuple[int, int, int]]:
    return [(r.function_code, r.address, r.count) for r in requests]


def sdm630() -> tuple[Register, ...]:
    profile = shipped_profile("sdm630")
    assert profile is not None
    return profile.registers


# --- the shipped SDM630 map ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        (ReadLimits(max_registers=125), [(4, 0, 108), (4, 200, 70), (4, 334, 48)]),
        (ReadLimits(max_registers=80), [(4, 0, 80), (4, 80, 28), (4, 200, 70), (4, 334, 48)]),
        # the profile's own limits (80 registers, bridging at most 16)
        (
            ReadLimits(max_registers=80, max_gap=16),
            [(4, 0, 80), (4, 80, 28), (4, 200, 70), (4, 334, 48)],
        ),
        # no bridging at all: one request per contiguous run
        (ReadLimits(max_registers=125, max_gap=0), None),
    ],
)
def test_sdm630_plan(limits: ReadLimits, expected: list[tuple[int, int, int]] | None) -> None:
    registers = sdm630()
    requests = plan(registers, limits)
    if expected is not None:
        assert spans(requests) == expected
    else:
        # every request is gap free: the words it reads are exactly its registers' words
        for request, covered in assign(requests, registers):
            assert sum(r.data_type.words for r in covered) == request.count
    assert sum(len(covered) for _, covered in assign(requests, registers)) == len(registers)


@pytest.mark.parametrize("cap", [2, 3, 7, 40, 60, 80, 125])
def test_sdm630_never_exceeds_cap(cap: int) -> None:
    registers = sdm630()
    requests = plan(registers, ReadLimits(max_registers=cap))
    assert max(r.count for r in requests) <= cap
    assert sorted(r.name for _, covered in assign(requests, registers) for r in covered) == sorted(
        r.name for r in registers
    )


def test_register_wider_than_cap_is_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        plan(sdm630(), ReadLimits(max_registers=1))
    assert str(info.value) == (
        "register 'voltageL1' needs 2 registers, more than the device's limit of 1 per request"
    )


# --- rules ------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_gap", [0, 1, 5, 50, 123])
def test_gap_of_max_gap_is_bridged_and_one_more_splits(max_gap: int) -> None:
    limits = ReadLimits(max_gap=max_gap)
    bridged = [word_reg(0), word_reg(1 + max_gap)]
    split = [word_reg(0), word_reg(2 + max_gap)]
    assert spans(plan(bridged, limits)) == [(3, 0, max_gap + 2)]
    assert spans(plan(split, limits)) == [(3, 0, 1), (3, 2 + max_gap, 1)]


@pytest.mark.parametrize(
    ("registers", "limits", "expected"),
    [
        # adjacent registers of different widths merge
        ([word_reg(0, 2), word_reg(2, 4), word_reg(6, 1)], ReadLimits(), [(3, 0, 7)]),
        # the cap counts the whole span including bridged gaps
        ([word_reg(0, 2), word_reg(8, 2)], ReadLimits(max_registers=10, max_gap=8), [(3, 0, 10)]),
        (
            [word_reg(0, 2), word_reg(9, 2)],
            ReadLimits(max_registers=10, max_gap=8),
            [(3, 0, 2), (3, 9, 2)],
        ),
        # a register nested in a wider one adds nothing
        ([word_reg(10, 4), word_reg(11, 1)], ReadLimits(max_gap=0), [(3, 10, 4)]),
        # function codes are planned separately, sorted by code
        (
            [word_reg(0, 2, fc=4), word_reg(0, 2, fc=3), word_reg(2, 2, fc=4)],
            ReadLimits(),
            [(3, 0, 2), (4, 0, 4)],
        ),
        # the end of the address space
        ([word_reg(65534, 2)], ReadLimits(), [(3, 65534, 2)]),
        ([], ReadLimits(), []),
    ],
)
def test_plan_table(
    registers: list[Register], limits: ReadLimits, expected: list[tuple[int, int, int]]
) -> None:
    assert spans(plan(registers, limits)) == expected


@pytest.mark.parametrize(
    ("registers", "limits", "expected"),
    [
        # 2500 coils: the 2000-bit Modbus limit, whatever the register limit
        (
            [bit_reg(a) for a in range(2500)],
            ReadLimits(max_registers=1),
            [(1, 0, 2000), (1, 2000, 500)],
        ),
        (
            [bit_reg(a, fc=2) for a in range(250)],
            ReadLimits(max_bits=100),
            [
                (2, 0, 100),
                (2, 100, 100),
                (2, 200, 50),
            ],
        ),
        # bits and words side by side: each function code under its own cap
        (
            [bit_reg(a) for a in range(10)] + [word_reg(a, 2) for a in range(0, 20, 2)],
            ReadLimits(max_registers=8, max_bits=6),
            [(1, 0, 6), (1, 6, 4), (3, 0, 8), (3, 8, 8), (3, 16, 4)],
        ),
        # max_gap applies to bits too
        ([bit_reg(0), bit_reg(3)], ReadLimits(max_gap=1), [(1, 0, 1), (1, 3, 1)]),
        ([bit_reg(0), bit_reg(3)], ReadLimits(max_gap=2), [(1, 0, 4)]),
    ],
)
def test_bit_registers_use_max_bits(
    registers: list[Register], limits: ReadLimits, expected: list[tuple[int, int, int]]
) -> None:
    assert spans(plan(registers, limits)) == expected


@pytest.mark.parametrize("seed", range(10))
def test_plan_does_not_depend_on_input_order(seed: int) -> None:
    registers = list(sdm630()) + [word_reg(a, 2, fc=3) for a in range(0, 300, 7)]
    shuffled = registers[:]
    random.Random(seed).shuffle(shuffled)
    limits = ReadLimits(max_registers=50, max_gap=3)
    assert plan(shuffled, limits) == plan(registers, limits)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_registers": 0}, "max_read_registers 0 is outside 1..125"),
        ({"max_registers": 126}, "max_read_registers 126 is outside 1..125"),
        ({"max_bits": 0}, "max_read_bits 0 is outside 1..2000"),
        ({"max_bits": 2001}, "max_read_bits 2001 is outside 1..2000"),
        ({"max_gap": -1}, "max_gap_registers -1 must be 0 or more"),
    ],
)
def test_read_limits_validation(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        ReadLimits(**kwargs)
    assert str(info.value) == message


def test_read_request_end() -> None:
    assert ReadRequest(4, 342, 48).end == 390


# --- assign ------------------------------------------------------------------------------------


def test_assign_pairs_each_request_with_its_registers() -> None:
    a, b, c = word_reg(0, 2, name="a"), word_reg(2, 1, name="b"), word_reg(10, 2, name="c")
    d = word_reg(0, 2, fc=4, name="d")
    requests = [ReadRequest(3, 0, 3), ReadRequest(3, 10, 2), ReadRequest(4, 0, 2)]
    assert assign(requests, [c, d, b, a]) == [
        (requests[0], (b, a)),
        (requests[1], (c,)),
        (requests[2], (d,)),
    ]


def test_assign_gives_a_register_to_its_first_cover_only() -> None:
    a = word_reg(5, 1, name="a")
    requests = [ReadRequest(3, 0, 10), ReadRequest(3, 5, 1)]
    assert assign(requests, [a]) == [(requests[0], (a,)), (requests[1], ())]


@pytest.mark.parametrize(
    ("requests", "message"),
    [
        ([ReadRequest(3, 0, 1)], "no planned request covers the register(s) a, b"),
        # right address, wrong function code
        ([ReadRequest(4, 0, 10)], "no planned request covers the register(s) a, b"),
        ([ReadRequest(3, 0, 2)], "no planned request covers the register(s) b"),
    ],
)
def test_assign_reports_uncovered_registers(requests: list[ReadRequest], message: str) -> None:
    registers = [word_reg(0, 2, name="a"), word_reg(4, 1, name="b")]
    with pytest.raises(ConfigError) as info:
        assign(requests, registers)
    assert str(info.value) == message


# --- properties ------------------------------------------------------------------------------


@st.composite
def register_sets(draw: st.DrawFn, max_size: int = 40, max_address: int = 400) -> list[Register]:
    """Distinct registers (possibly overlapping) on function codes 1, 3 and 4."""
    specs = draw(
        st.lists(
            st.tuples(
                st.sampled_from([1, 3, 4]),
                st.integers(0, max_address),
                st.sampled_from([1, 2, 4]),
            ),
            min_size=1,
            max_size=max_size,
            unique=True,
        )
    )
    return [
        bit_reg(a, fc) if fc == 1 else word_reg(a, w, fc) for fc, a, w in specs if fc != 1 or w == 1
    ]


limits_strategy = st.builds(
    ReadLimits,
    max_registers=st.integers(4, 125),
    max_bits=st.integers(1, 40),
    max_gap=st.integers(0, 60),
)


@FAST
@given(register_sets(), limits_strategy)
def test_every_register_covered_once_and_no_request_over_cap(
    registers: list[Register], limits: ReadLimits
) -> None:
    requests = plan(registers, limits)
    for request in requests:
        cap = limits.max_bits if request.function_code in (1, 2) else limits.max_registers
        assert 1 <= request.count <= cap
    for register in registers:
        covering = [r for r in requests if r.covers(register)]
        overlaps = any(
            o is not register
            and o.function_code == register.function_code
            and o.address < register.end
            and register.address < o.end
            for o in registers
        )
        # A register overlapping another (one address read as two types) may sit in two
        # requests; assign() below still gives it to exactly one.
        assert len(covering) == 1 or (overlaps and covering), (register, covering)
    pairs = assign(requests, registers)
    assert sorted(r.name for _, covered in pairs for r in covered) == sorted(
        r.name for r in registers
    )
    # nothing is read that no register needs: each request starts and ends on a register
    for request, covered in pairs:
        assert min(r.address for r in covered) == request.address
        assert max(r.end for r in covered) == request.end


@FAST
@given(register_sets(), limits_strategy, st.randoms(use_true_random=False))
def test_plan_is_a_function_of_the_set(
    registers: list[Register], limits: ReadLimits, rnd: random.Random
) -> None:
    shuffled = registers[:]
    rnd.shuffle(shuffled)
    assert plan(shuffled, limits) == plan(registers, limits)
    assert plan(registers, limits) == sorted(plan(registers, limits))


def _group_ok(group: list[Register], cap: int, max_gap: int) -> bool:
    """One request may read `group`: span within the cap, no unused run longer than max_gap."""
    intervals = sorted((r.address, r.end) for r in group)
    end = intervals[0][1]
    for address, stop in intervals[1:]:
        if address - end > max_gap:
            return False
        end = max(end, stop)
    return end - intervals[0][0] <= cap


def reference_minimum(registers: list[Register], cap: int, max_gap: int) -> int:
    """Fewest requests over every partition of the registers into readable groups (brute force)."""
    best = len(registers)
    groups: list[list[Register]] = []

    def place(i: int) -> None:
        nonlocal best
        if len(groups) >= best:
            return
        if i == len(registers):
            # the gap rule is checked on whole groups: a later register may fill a gap
            if all(_group_ok(g, cap, max_gap) for g in groups):
                best = len(groups)
            return
        register = registers[i]
        for group in groups:
            low = min(register.address, *(r.address for r in group))
            high = max(register.end, *(r.end for r in group))
            if high - low <= cap:
                group.append(register)
                place(i + 1)
                group.pop()
        groups.append([register])
        place(i + 1)
        groups.pop()

    place(0)
    return best


@FAST
@given(
    st.lists(
        st.tuples(st.integers(0, 24), st.sampled_from([1, 2, 4])),
        min_size=1,
        max_size=7,
        unique=True,
    ),
    st.integers(4, 12),
    st.integers(0, 4),
)
def test_plan_uses_the_minimum_number_of_requests(
    specs: list[tuple[int, int]], cap: int, max_gap: int
) -> None:
    registers = [word_reg(a, w) for a, w in specs]
    requests = plan(registers, ReadLimits(max_registers=cap, max_gap=max_gap))
    assert len(requests) == reference_minimum(registers, cap, max_gap)


@pytest.mark.parametrize(
    ("specs", "cap", "max_gap", "expected"),
    [
        ([(0, 1), (1, 4), (2, 1)], 4, 0, 2),
        ([(0, 1), (3, 2)], 6, 1, 2),
        ([(0, 1), (3, 2), (1, 2)], 6, 1, 1),  # a register filling the gap joins both
        ([(0, 4), (4, 4), (8, 4)], 12, 0, 1),
        ([(0, 4), (4, 4), (8, 4)], 11, 0, 2),
    ],
)
def test_reference_minimum_itself(
    specs: list[tuple[int, int]], cap: int, max_gap: int, expected: int
) -> None:
    registers = [word_reg(a, w) for a, w in specs]
    assert reference_minimum(registers, cap, max_gap) == expected
    assert len(plan(registers, ReadLimits(max_registers=cap, max_gap=max_gap))) == expected


# --- poll classes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("classes", "meter_id", "index", "daily", "due"),
    [
        ({1}, 7, 0, False, {1}),
        ({1, 0}, 7, 5, False, {1}),
        ({1, 0}, 7, 5, True, {1, 0}),
        ({1, 3}, 0, 9, False, {1, 3}),  # 9 + 0 is a multiple of 3
        ({1, 3}, 1, 9, False, {1}),
        ({1, 3}, 2, 10, False, {1, 3}),  # the offset: 10 + 2
        ({2, 3}, 1, 5, False, {2, 3}),  # no class 1: a tick may read only slow registers
        ({2, 3}, 1, 6, False, set()),  # ... or nothing at all
        ({1, 2, 4, 0}, 4, 4, True, {0, 1, 2, 4}),
    ],
)
def test_due_classes(
    classes: set[int], meter_id: int, index: int, daily: bool, due: set[int]
) -> None:
    assert due_classes(classes, meter_id, index, daily) == frozenset(due)


@pytest.mark.parametrize("every", [2, 3, 7, 60])
def test_each_meter_reads_a_slow_class_once_every_n_ticks_and_meters_take_turns(every: int) -> None:
    ticks = range(1000, 1000 + 5 * every)
    for meter_id in range(3 * every):
        due_at = [t for t in ticks if every in due_classes({every}, meter_id, t, False)]
        assert len(due_at) == 5
        assert all(b - a == every for a, b in itertools.pairwise(due_at))
    # at any one tick one meter in N reads the class: the load is spread, not bunched
    for tick in ticks:
        assert sum(every in due_classes({every}, m, tick, False) for m in range(every * 10)) == 10


@pytest.mark.parametrize(
    ("tick_ms", "period_ms", "index"),
    [
        (0, 1000, 0),
        (60_000, 10_000, 6),
        (60_000 + 9_999, 10_000, 6),
        (1_700_000_000_000, 60_000, 28_333_333),
    ],
)
def test_tick_index_comes_from_the_time_alone(tick_ms: int, period_ms: int, index: int) -> None:
    assert tick_index(tick_ms, period_ms) == index


@pytest.mark.parametrize("period_ms", [7_000, 60_000, 900_000, 3_600_000])
@pytest.mark.parametrize("meter_id", [0, 1, 2, 17, 100_000])
def test_daily_registers_fall_due_once_a_day_at_the_meters_moment(
    period_ms: int, meter_id: int
) -> None:
    start = 1_700_000_000_000 // period_ms * period_ms
    ticks = range(start, start + 3 * DAY_MS, period_ms)
    due = [t for t in ticks[1:] if daily_due(meter_id, t - period_ms, t)]
    # the reference: the meter's moment on each day, and the first tick at or after it
    midnight = start - start % DAY_MS
    moments = [midnight + k * DAY_MS + daily_moment_ms(meter_id) for k in range(4)]
    expected = [ticks[bisect_left(ticks, m)] for m in moments if ticks[0] < m <= ticks[-1]]
    assert due == expected
    assert len(due) >= 2


def test_daily_moments_spread_over_the_day() -> None:
    moments = sorted(daily_moment_ms(i) for i in range(1, 1001))
    assert len(set(moments)) == 1000
    gaps = [b - a for a, b in itertools.pairwise([*moments, moments[0] + DAY_MS])]
    assert max(gaps) < 3 * DAY_MS / 1000  # evenly: no gap over three times the average


# power every tick, energy every 4th tick, identity (another function code) once, then daily
POWER = [word_reg(a, 2, fc=4) for a in (0, 2, 4)]
ENERGY = [replace(word_reg(a, 2, fc=4), poll_every=4) for a in (200, 202)]
IDENTITY = [replace(word_reg(a, 2, fc=3), poll_every=0) for a in (0xFC00, 0xFC02)]


@pytest.mark.parametrize(
    ("index", "daily", "expected"),
    [
        (1, False, [(4, 0, 6)]),
        (4, False, [(4, 0, 6), (4, 200, 4)]),
        (3, True, [(3, 0xFC00, 4), (4, 0, 6)]),
        (8, True, [(3, 0xFC00, 4), (4, 0, 6), (4, 200, 4)]),
    ],
)
def test_a_tick_plans_only_its_due_registers(
    index: int, daily: bool, expected: list[tuple[int, int, int]]
) -> None:
    registers = [*POWER, *ENERGY, *IDENTITY]
    due = due_classes({r.poll_every for r in registers}, 0, index, daily)
    assert spans(plan([r for r in registers if r.poll_every in due])) == expected


@FAST
@given(
    st.lists(
        st.tuples(st.integers(0, 24), st.sampled_from([1, 2, 4]), st.sampled_from([0, 1, 2, 3])),
        min_size=1,
        max_size=7,
        unique_by=lambda spec: spec[0],
    ),
    st.integers(0, 11),
    st.booleans(),
    st.integers(4, 12),
    st.integers(0, 4),
)
def test_each_ticks_plan_uses_the_minimum_number_of_requests(
    specs: list[tuple[int, int, int]], index: int, daily: bool, cap: int, max_gap: int
) -> None:
    registers = [replace(word_reg(a, w), poll_every=n) for a, w, n in specs]
    due = due_classes({r.poll_every for r in registers}, 5, index, daily)
    due_registers = [r for r in registers if r.poll_every in due]
    requests = plan(due_registers, ReadLimits(max_registers=cap, max_gap=max_gap))
    expected = reference_minimum(due_registers, cap, max_gap) if due_registers else 0
    assert len(requests) == expected
    assert sum(len(c) for _, c in assign(requests, due_registers)) == len(due_registers)
