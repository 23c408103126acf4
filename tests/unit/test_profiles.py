"""emm.profiles: the shipped TOML register maps, and the errors a bad profile file gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from emm.errors import ConfigError
from emm.planner import ReadLimits
from emm.profiles import load_profile, parse_profile, shipped_profile, shipped_profiles
from emm.registers import DataType, Order

pytestmark = pytest.mark.timeout(30)

SHIPPED = [
    "abb_b23",
    "abb_b24",
    "cg_em24",
    "cg_em340",
    "chint_dtsu666",
    "finder_7m38",
    "fronius_smart_meter_sunspec",
    "fronius_sunspec",
    "growatt",
    "huawei_sun2000",
    "janitza_umg604",
    "janitza_umg96rm",
    "kostal_ksem",
    "orno_we517",
    "schneider_iem3000",
    "schneider_pm5000",
    "sdm120",
    "sdm230",
    "sdm530",
    "sdm630",
    "sdm72d",
    "sdm72d_m2",
    "siemens_pac2200",
    "sma_sunspec",
    "socomec_countis_e23",
    "solaredge_sunspec",
    "sungrow_sg",
]


def test_shipped_profiles_parse_with_unique_types() -> None:
    assert [p.type for p in shipped_profiles()] == SHIPPED


@pytest.mark.parametrize("type_", SHIPPED)
def test_shipped_profile_is_consistent(type_: str) -> None:
    profile = shipped_profile(type_)
    assert profile is not None
    assert profile.type == type_
    assert profile.path == f"profiles/{type_}.toml"
    assert profile.source
    names = [r.name for r in profile.registers]
    assert len(names) == len(set(names))
    # every row cites the datasheet it comes from
    assert all(row.source for row in profile.rows)
    # the same text parses to the same profile (the loader has no hidden state)
    text = (Path(__file__).parents[2] / "emm" / "profiles" / f"{type_}.toml").read_text()
    assert parse_profile(text, profile.path) == profile


def test_unknown_shipped_profile() -> None:
    assert shipped_profile("no_such_meter") is None


def test_sdm630_profile() -> None:
    profile = shipped_profile("sdm630")
    assert profile is not None
    assert profile.limits == ReadLimits(max_registers=80, max_bits=2000, max_gap=16)
    registers = {r.name: r for r in profile.registers}
    assert len(registers) == 85
    v1 = registers["voltageL1"]
    assert (v1.address, v1.function_code, v1.data_type, v1.order, v1.unit) == (
        0,
        4,
        DataType.FLOAT32,
        Order.ABCD,
        "V",
    )
    power = registers["activePower"]
    assert (power.address, power.function_code, power.data_type) == (52, 4, DataType.FLOAT32)


HEADER = """\
# a test profile
type = "demo"
max_read_registers = 60

[[registers]]
name = "a"
address = 0
function_code = 4
data_type = "float32"
source = "test table 1"

[[registers]]  # the row under test starts on line 12
"""
GOOD_ROW = 'name = "b"\naddress = 10\nfunction_code = 4\ndata_type = "float32"\n'
KNOWN = (
    "(known: 1 int16, 2 int32, 3 float32, 4 uint16, 5 uint32, 6 int64, 7 uint64, 8 float64, "
    "9 bool, 10 string, 11 uint8_high, 12 uint8_low, 13 int8_high, 14 int8_low)"
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "demo.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_good_test_profile_loads(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + GOOD_ROW + 'missing = ["0xFFFFFFFF"]\norder = "cdab"\n')
    profile = load_profile(path)
    assert profile.type == "demo"
    assert profile.name == "demo"
    assert profile.path == str(path)
    assert profile.limits == ReadLimits(max_registers=60)
    assert [(r.name, r.address, r.order) for r in profile.registers] == [
        ("a", 0, Order.ABCD),
        ("b", 10, Order.CDAB),
    ]
    assert profile.registers[1].missing == frozenset({0xFFFFFFFF})
    assert [row.source for row in profile.rows] == ["test table 1", ""]
    assert [r.poll_every for r in profile.registers] == [1, 1]


def test_poll_every_is_a_row_key(tmp_path: Path) -> None:
    profile = load_profile(write(tmp_path, HEADER + GOOD_ROW + "poll_every = 0\n"))
    assert [r.poll_every for r in profile.registers] == [1, 0]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (GOOD_ROW.replace('"float32"', '"float99"'), f"unknown data_type 'float99' {KNOWN}"),
        (GOOD_ROW.replace("address = 10", "address = 1"), "'b' at 1 overlaps 'a' (0..1)"),
        (GOOD_ROW.replace('"b"', '"a"'), "name 'a' is used twice"),
        (GOOD_ROW.replace("function_code = 4\n", ""), "missing key 'function_code'"),
        (GOOD_ROW.replace('name = "b"\n', ""), "missing key 'name'"),
        (GOOD_ROW + "registr = 3\n", "unknown key(s) registr"),
        (GOOD_ROW + "scal = 3\nwords = 2\n", "unknown key(s) scal, words"),
        (
            GOOD_ROW.replace('"float32"', '"bool"'),
            "data_type bool does not fit function_code 4: bool goes with 1/2, numbers with 3/4",
        ),
        (GOOD_ROW + 'order = "ABDC"\n', "unknown order 'ABDC' (known: ABCD, CDAB, BADC, DCBA)"),
        (GOOD_ROW + "scale = 0\n", "scale 0.0 must be a finite number other than 0"),
        (GOOD_ROW + 'scale = "ten"\n', "could not convert string to float: 'ten'"),
        (
            GOOD_ROW.replace("address = 10", "address = 65535"),
            "register_address 65535 is outside 0..65535 for a float32",
        ),
        (
            GOOD_ROW.replace('"b"', '"b b"'),
            "measurement_name 'b b' must start with a letter or _ and use only letters, digits, "
            "_ . - (at most 100 characters)",
        ),
        (
            GOOD_ROW.replace('"b"', '"description"'),
            "measurement_name 'description' is reserved (InfluxDB tags and time: description, "
            "meter_id, time, type)",
        ),
        (
            GOOD_ROW.replace('"b"', '"b\\n"'),
            "measurement_name 'b\\n' must start with a letter or _ and use only letters, "
            "digits, _ . - (at most 100 characters)",
        ),
        (GOOD_ROW + 'missing = "0xFFFF"\n', "'missing' must be a list such as [\"0xFFFF\"]"),
        (
            GOOD_ROW + "poll_every = -1\n",
            "poll_every -1 must be a whole number of ticks, 0..10000 (0: once, then daily)",
        ),
        (
            GOOD_ROW + "poll_every = 2.5\n",
            "poll_every 2.5 must be a whole number of ticks, 0..10000 (0: once, then daily)",
        ),
        (
            GOOD_ROW + 'missing = ["0x1FFFFFFFF"]\n',
            "missing value 0x1FFFFFFFF does not fit a float32 (0..0xffffffff)",
        ),
    ],
)
def test_bad_row_names_file_line_and_reason(tmp_path: Path, row: str, reason: str) -> None:
    path = write(tmp_path, HEADER + row)
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    assert str(info.value) == f"{path}: line 12: {reason}"


def test_overlap_reports_the_later_address(tmp_path: Path) -> None:
    # the row with the higher address is the one reported, whatever the file order
    text = HEADER.replace("address = 0", "address = 21") + GOOD_ROW.replace("10", "20")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    assert str(info.value) == f"{path}: line 5: 'a' at 21 overlaps 'b' (20..21)"


def test_same_address_on_other_function_code_is_no_overlap(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + GOOD_ROW.replace("10", "0").replace("= 4", "= 3"))
    assert [(r.function_code, r.address) for r in load_profile(path).registers] == [(4, 0), (3, 0)]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('type = "demo"\n', "no [[registers]] rows"),
        ('type = "demo"\nregisters = []\n', "no [[registers]] rows"),
        (
            'type = "Demo"\n' + HEADER[HEADER.index("[[") :] + GOOD_ROW,
            "line 1: 'type' must be lowercase letters, digits or _",
        ),
        (
            'type = "demo\\n"\n' + HEADER[HEADER.index("[[") :] + GOOD_ROW,
            "line 1: 'type' must be lowercase letters, digits or _",
        ),
        (
            'type = "demo"\n'
            + "".join(
                f'[[registers]]\nname = "r{i}"\naddress = {i}\nfunction_code = 3\n'
                'data_type = "int16"\n'
                for i in range(2001)
            ),
            "2001 [[registers]] rows, at most 2000 are allowed",
        ),
        (
            HEADER.replace('type = "demo"\n', "") + GOOD_ROW,
            "line 1: 'type' must be lowercase letters, digits or _",
        ),
        (
            HEADER.replace("60", "126") + GOOD_ROW,
            "read limits: max_read_registers 126 is outside 1..125",
        ),
        (
            HEADER.replace("60", '"many"') + GOOD_ROW,
            "read limits: invalid literal for int() with base 10: 'many'",
        ),
        (
            HEADER + GOOD_ROW + "max_gap_registers = -1\n",
            "line 12: unknown key(s) max_gap_registers",
        ),  # a key after [[registers]] is the row's
        (
            HEADER.replace("60", "60\nmax_gap_registers = -1") + GOOD_ROW,
            "read limits: max_gap_registers -1 must be 0 or more",
        ),
        (
            'type = "demo"\n[[registers]\n',
            "not valid TOML: Expected ']]' at the end of an array "
            "declaration (at line 2, column 12)",
        ),
    ],
)
def test_bad_profile(tmp_path: Path, text: str, reason: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    assert str(info.value) == f"{path}: {reason}"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    assert str(info.value) == f"{path}: cannot read: No such file or directory"


def test_readme_device_table_lists_every_shipped_profile() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    table = readme.split("| maker | model | type | registers | datasheet |\n", 1)[1]
    rows = table.split("\n\n", 1)[0].splitlines()[1:]  # after the | --- | line
    listed = {cells[2]: int(cells[3]) for cells in (r.strip("|").split(" | ") for r in rows)}
    assert listed == {p.type: len(p.rows) for p in shipped_profiles()}
