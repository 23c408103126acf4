"""SunSpec model chains to register maps, and the probe's plausibility score (pure logic)."""

from __future__ import annotations

import pytest

from cli.probe import counters_grow, layout, score
from emm.errors import ConfigError
from emm.profiles import shipped_profile
from emm.registers import DataType, Order
from emm.sunspec import ModelBlock, blocks_in, models, register_map, type_name

pytestmark = pytest.mark.timeout(30)


def test_the_models_asked_for_are_known() -> None:
    assert {1, 101, 102, 103, 111, 112, 113, 160, 201, 202, 203, 204, 701} <= set(models())
    # lengths as the SunSpec definitions give them (L: registers after the length register)
    lengths = {m: models()[m].fixed_length - 2 for m in (1, 103, 113, 203, 701)}
    assert lengths == {1: 66, 103: 50, 113: 60, 203: 105, 701: 153}


def test_an_inverter_chain_becomes_registers_with_scale_factors() -> None:
    rows = dict(
        (r.name, r) for r, _ in register_map([ModelBlock(1, 40002, 66), ModelBlock(103, 40070, 50)])
    )
    assert (rows["maker"].address, rows["maker"].length, rows["maker"].poll_every) == (40004, 16, 0)
    assert rows["serial"].address == 40052
    power = rows["acPower"]
    assert (power.address, power.data_type, power.unit, power.scale_register) == (
        40072 + 12,
        DataType.INT16,
        "W",
        "m103.W_SF",
    )
    assert rows["m103.W_SF"].address == 40085
    assert rows["acEnergy"].data_type is DataType.UINT32 and rows["acEnergy"].is_counter
    assert rows["powerFactor"].scale == 0.01  # percent -> ratio
    assert rows["operatingState"].enum[3] == (4, "MPPT")
    assert rows["events"].bits[0] == (0, "GROUND_FAULT")
    assert "ID" not in rows and "m1.Pad" not in rows and "m1.DA" not in rows


def test_the_mppt_model_repeats_a_block_per_tracker() -> None:
    block = ModelBlock(160, 100, 8 + 3 * 20)
    assert blocks_in(models()[160], block) == 3
    rows = {r.name: r for r, _ in register_map([block])}
    assert [rows[f"dcPower{k}"].address for k in (1, 2, 3)] == [121, 141, 161]
    assert rows["dcPower3"].scale_register == "m160.DCW_SF"
    assert rows["mppt2Name"].data_type is DataType.STRING


def test_a_second_model_of_an_id_gets_suffixed_names() -> None:
    chain = [ModelBlock(1, 40002, 65), ModelBlock(203, 40069, 105), ModelBlock(1, 40176, 65)]
    names = [r.name for r, _ in register_map(chain)]
    assert names.count("maker") == 1 and "maker_2" in names


def test_a_model_shorter_than_its_definition_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        register_map([ModelBlock(103, 40070, 40)])
    assert str(info.value) == "model 103 at 40070 has length 40, its definition needs 50"


def test_unknown_models_are_left_out() -> None:
    assert register_map([ModelBlock(64110, 40002, 10)]) == []


@pytest.mark.parametrize(
    ("maker", "model", "type_"),
    [
        ("SMA", "STP10.0-3AV-40", "sma_stp10_0_3av_40"),
        ("Fronius", "Symo 10.0-3-M", "fronius_symo_10_0_3_m"),
        ("", "", "sunspec_device"),
    ],
)
def test_type_name(maker: str, model: str, type_: str) -> None:
    assert type_name(maker, model) == type_


def test_a_plausible_meter_outscores_a_garbled_one() -> None:
    profile = shipped_profile("sdm630")
    assert profile is not None
    regs = profile.registers
    good = {
        "voltageL1": 230.1,
        "voltageL2": 229.8,
        "voltageL3": 231.0,
        "frequency": 50.01,
        "currentL1": 5.0,
        "activePowerL1": 1093.0,
        "powerFactorL1": 0.95,
        "importActiveEnergy": 1234.5,
    }
    points, evidence = score(good, regs, 0)
    assert points == 9.75
    assert evidence == [
        "voltageL1 230.1 V",
        "voltageL2 229.8 V",
        "voltageL3 231 V",
        "phase voltages alike",
        "frequency 50.01 Hz",
        "P≈V·I·PF on L1 (1093 W vs 1093 W)",
    ]
    garbled = {
        "voltageL1": 1.2e-38,
        "voltageL2": 3.0e12,
        "frequency": 0.0,
        "importActiveEnergy": -5.0,
    }
    bad_points, bad_evidence = score(garbled, regs, 2)
    assert bad_points == -8.0 and bad_evidence == []


def test_counters_that_go_down_count_against() -> None:
    profile = shipped_profile("sdm630")
    assert profile is not None
    from cli.probe import Candidate

    first = Candidate(
        profile, Order.ABCD, 0, {"importActiveEnergy": 10.0, "exportActiveEnergy": 1.0}
    )
    grew = Candidate(
        profile, Order.ABCD, 0, {"importActiveEnergy": 10.5, "exportActiveEnergy": 1.0}
    )
    fell = Candidate(profile, Order.ABCD, 0, {"importActiveEnergy": 9.0, "exportActiveEnergy": 1.0})
    assert counters_grow(first, grew) == (1.1, "counters not going down (1 of 2 grew)")
    assert counters_grow(first, fell) == (-2.0, "")


def test_layout_moves_addresses_and_orders_multi_register_values() -> None:
    profile = shipped_profile("cg_em24")
    assert profile is not None
    moved = {r.name: r for r in layout(profile.registers, Order.DCBA, 1)}
    original = {r.name: r for r in profile.registers}
    assert moved["voltageL1"].address == original["voltageL1"].address + 1
    assert moved["voltageL1"].order is Order.DCBA  # int32
    assert moved["frequency"].order is original["frequency"].order  # int16 keeps its own
