"""Golden vectors: raw register words -> decoded value, for rows of every shipped profile.

The words are written out by hand (IEEE-754 bit patterns, two's complement integers, word
order as the datasheet states it), so the decoding is pinned independently of our encoder:
a wrong type, order, scale or address-independent setting in a profile changes a value here.
No datasheet read for these profiles gives a worked example with raw bytes for a register
they map (the UMG 96RM manual's read example shows an integer reply for a float register),
so the vectors are hand-computed words for a known value. Every (data type, order) a
profile uses has a vector.
"""

from __future__ import annotations

import pytest

from emm.codec import decode, decode_text
from emm.profiles import Profile, shipped_profiles
from emm.registers import Register

pytestmark = pytest.mark.timeout(30)

# float32 ABCD patterns used below
F230 = [0x4366, 0x0000]  # 230.0
F50 = [0x4248, 0x0000]  # 50.0
F1234_5 = [0x449A, 0x5000]  # 1234.5
FMINUS_HALF = [0xBF00, 0x0000]  # -0.5

# (profile type, register name, raw words, decoded value; None = "not available")
VECTORS: list[tuple[str, str, list[int], float | None]] = [
    # Eastron: float32 big endian, no scaling
    ("sdm630", "voltageL1", F230, 230.0),
    ("sdm630", "frequency", F50, 50.0),
    ("sdm630", "importActiveEnergy", F1234_5, 1234.5),
    ("sdm120", "voltageL1", F230, 230.0),
    ("sdm120", "totalPowerFactor", FMINUS_HALF, -0.5),
    ("sdm120", "importActiveEnergy", F1234_5, 1234.5),
    ("sdm72d", "activePower", [0xC4BB, 0x8000], -1500.0),
    ("sdm72d", "importActiveEnergy", F1234_5, 1234.5),
    ("sdm72d", "totalActiveEnergy", [0x4640, 0xE500], 12345.25),
    ("sdm72d_m2", "voltageL1", F230, 230.0),
    ("sdm72d_m2", "frequency", F50, 50.0),
    ("sdm72d_m2", "exportActiveEnergy", F1234_5, 1234.5),
    ("sdm230", "voltageL1", F230, 230.0),
    ("sdm230", "totalPowerFactor", FMINUS_HALF, -0.5),
    ("sdm230", "importActiveEnergy", F1234_5, 1234.5),
    # ABB B23: big-endian integers with a fixed resolution, sentinels per row
    ("abb_b23", "voltageL1", [0x0000, 0x08FD], 230.1),  # uint32 2301 x 0.1 V
    ("abb_b23", "voltageL1", [0xFFFF, 0xFFFF], None),
    ("abb_b23", "activePower", [0xFFFD, 0xB610], -1500.0),  # int32 -150000 x 0.01 W
    ("abb_b23", "activePower", [0x7FFF, 0xFFFF], None),
    ("abb_b23", "frequency", [0x1388], 50.0),  # uint16 5000 x 0.01 Hz
    ("abb_b23", "totalPhaseAngle", [0xFED4], -30.0),  # int16 -300 x 0.1 deg
    ("abb_b23", "totalPhaseAngle", [0x7FFF], None),
    ("abb_b23", "importActiveEnergy", [0x0000, 0x0000, 0x075B, 0xCD15], 1234567.89),
    ("abb_b23", "netActiveEnergy", [0xFFFF, 0xFFFF, 0xFFFF, 0xFF9C], -1.0),  # int64 -100
    # Janitza: float32 big endian, energies in Wh
    ("janitza_umg604", "voltageL1", F230, 230.0),
    ("janitza_umg604", "frequency", F50, 50.0),
    ("janitza_umg604", "importActiveEnergy", F1234_5, 1234.5),
    # Carlo Gavazzi: INT32 least significant word first (CDAB), INT16, fixed weights
    ("cg_em24", "voltageL1", [0x08FD, 0x0000], 230.1),  # 2301 = Volt*10
    ("cg_em24", "activePower", [0xC568, 0xFFFF], -1500.0),  # -15000 = Watt*10
    ("cg_em24", "currentL1", [0x1388, 0x0000], 5.0),  # 5000 = Ampere*1000
    ("cg_em24", "totalPowerFactor", [0xFC4A], -0.95),  # -950 = PF*1000
    ("cg_em24", "frequency", [0x01F4], 50.0),  # 500 = Hz*10
    ("cg_em24", "importActiveEnergyL1", [0xD687, 0x0012], 123456.7),  # 1234567 = kWh*10
    ("cg_em340", "voltageL1", [0x08FD, 0x0000], 230.1),
    ("cg_em340", "activePower", [0xC568, 0xFFFF], -1500.0),
    ("cg_em340", "totalPowerFactor", [0xFC4A], -0.95),
    ("cg_em340", "frequency", [0x01F4], 50.0),
    ("cg_em340", "importActiveEnergy", [0xD687, 0x0012], 123456.7),
    # Chint DTSU666: float32 holding the reading in fixed units (0.1 V, 0.001 A, 0.01 Hz)
    ("chint_dtsu666", "voltageL1", [0x450F, 0xC000], 230.0),  # 2300.0 x 0.1 V
    ("chint_dtsu666", "currentL1", [0x459C, 0x4000], 5.0),  # 5000.0 x 0.001 A
    ("chint_dtsu666", "frequency", [0x459C, 0x4000], 50.0),  # 5000.0 x 0.01 Hz
    ("chint_dtsu666", "importActiveEnergy", F1234_5, 1234.5),
    # ORNO: float32 big endian, powers in kW
    ("orno_we517", "voltageL1", F230, 230.0),
    ("orno_we517", "activePower", [0x4020, 0x0000], 2.5),
    ("orno_we517", "importActiveEnergy", F1234_5, 1234.5),
    # Schneider iEM3000: float32 big endian, energies int64 in Wh, NaN / 0x8000... missing
    ("schneider_iem3000", "voltageL1", F230, 230.0),
    ("schneider_iem3000", "activePower", [0x3FC0, 0x0000], 1.5),
    ("schneider_iem3000", "frequency", [0xFFC0, 0x0000], None),  # NaN: not available
    ("schneider_iem3000", "importActiveEnergy", [0x0000, 0x0000, 0x075B, 0xCD15], 123456789.0),
    ("schneider_iem3000", "importActiveEnergy", [0x8000, 0x0000, 0x0000, 0x0000], None),
    # Siemens PAC2200: float32 and double big endian
    ("siemens_pac2200", "voltageL1", F230, 230.0),
    ("siemens_pac2200", "powerFactorL1", [0x3F00, 0x0000], 0.5),
    ("siemens_pac2200", "importActiveEnergy", [0x40FE, 0x2408, 0x0000, 0x0000], 123456.5),
    # Finder 7M.38: float32 big endian
    ("finder_7m38", "voltageL1", F230, 230.0),
    ("finder_7m38", "activePower", [0xC4BB, 0x8000], -1500.0),
    ("finder_7m38", "thdVoltageL1", [0x4020, 0x0000], 2.5),
    # Eastron SDM530: float32 big endian, the SDM630's parameter numbering
    ("sdm530", "voltageL1", F230, 230.0),
    ("sdm530", "frequency", F50, 50.0),
    ("sdm530", "importActiveEnergy", F1234_5, 1234.5),
    # Janitza UMG 96RM: float32 big endian, energies in Wh
    ("janitza_umg96rm", "voltageL1", F230, 230.0),
    ("janitza_umg96rm", "frequency", F50, 50.0),
    ("janitza_umg96rm", "importActiveEnergy", F1234_5, 1234.5),
    # Schneider PM5xxx: float32 in kW, Int64 energies in Wh, NaN / 0x8000... missing
    ("schneider_pm5000", "voltageL1", F230, 230.0),
    ("schneider_pm5000", "activePower", [0x3FC0, 0x0000], 1.5),
    ("schneider_pm5000", "frequency", [0xFFC0, 0x0000], None),
    ("schneider_pm5000", "importActiveEnergy", [0x0000, 0x0000, 0x075B, 0xCD15], 123456789.0),
    ("schneider_pm5000", "importActiveEnergy", [0x8000, 0x0000, 0x0000, 0x0000], None),
    # Socomec Countis E23/E24: U32/S32 big endian; kW/100 is units of 10 W
    ("socomec_countis_e23", "voltageL1", [0x0000, 0x59E4], 230.12),  # 23012 x 0.01 V
    ("socomec_countis_e23", "currentL1", [0x0000, 0x1388], 5.0),  # 5000 x 0.001 A
    ("socomec_countis_e23", "frequency", [0x0000, 0x1388], 50.0),  # 5000 x 0.01 Hz
    ("socomec_countis_e23", "activePower", [0xFFFF, 0xFF6A], -1500.0),  # -150 x 10 W
    ("socomec_countis_e23", "powerFactor", [0xFFFF, 0xFC4A], -0.95),  # -950 / 1000
    ("socomec_countis_e23", "activePower", [0x8000, 0x0000], None),
    ("socomec_countis_e23", "voltageL1", [0xFFFF, 0xFFFF], None),
    # KOSTAL KSEM: U32/I32/U64 big endian, direction-split unsigned powers
    ("kostal_ksem", "importActivePower", [0x0000, 0x3A98], 1500.0),  # 15000 x 0.1 W
    ("kostal_ksem", "voltageL1", [0x0003, 0x8270], 230.0),  # 230000 x 0.001 V
    ("kostal_ksem", "powerFactorL1", [0xFFFF, 0xFC4A], -0.95),  # -950 x 0.001
    ("kostal_ksem", "frequency", [0x0000, 0xC350], 50.0),  # 50000 x 0.001 Hz
    ("kostal_ksem", "importActiveEnergy", [0x0000, 0x0000, 0x00BC, 0x614E], 1234567.8),
    # Huawei SUN2000: integers big endian, value = raw / gain
    ("huawei_sun2000", "pvVoltage1", [0x0EF2], 382.6),  # I16 3826, gain 10
    ("huawei_sun2000", "pvCurrent1", [0x0306], 7.74),  # I16 774, gain 100
    ("huawei_sun2000", "voltageL1", [0x08FD], 230.1),  # U16 2301, gain 10
    ("huawei_sun2000", "currentL1", [0x0000, 0x1D19], 7.449),  # I32 7449, gain 1000
    ("huawei_sun2000", "activePower", [0x0000, 0x142E], 5.166),  # I32 5166 W = 5.166 kW
    ("huawei_sun2000", "activePower", [0xFFFF, 0xFA24], -1.5),  # I32 -1500 W
    ("huawei_sun2000", "powerFactor", [0xFC4A], -0.95),  # I16 -950, gain 1000
    ("huawei_sun2000", "frequency", [0x138D], 50.05),  # U16 5005, gain 100
    ("huawei_sun2000", "totalYield", [0x0082, 0x3A29], 85345.69),  # U32 8534569, gain 100
    # Growatt V1.20: unsigned integers, high word first, fixed resolution
    ("growatt", "pvVoltage1", [0x0EF2], 382.6),  # 3826 x 0.1 V
    ("growatt", "activePower", [0x0000, 0xC9CB], 5165.9),  # 51659 x 0.1 W
    ("growatt", "frequency", [0x138D], 50.05),  # 5005 x 0.01 Hz
    ("growatt", "totalYield", [0x000D, 0x05D1], 85345.7),  # 853457 x 0.1 kWh
    # Sungrow SG: U16 big endian; 32-bit values low word first (CDAB)
    ("sungrow_sg", "dailyYield", [0x00C7], 19.9),  # 199 x 0.1 kWh
    ("sungrow_sg", "totalYield", [0x4D62, 0x0001], 85346.0),  # 0x00014D62 kWh
    ("sungrow_sg", "activePower", [0x142E, 0x0000], 5166.0),  # 0x0000142E W
    ("sungrow_sg", "reactivePower", [0xFED4, 0xFFFF], -300.0),  # 0xFFFFFED4 var
    ("sungrow_sg", "frequency", [0x01F4], 50.0),  # 500 x 0.1 Hz
    # ABB B24: the B23's map
    ("abb_b24", "voltageL1", [0x0000, 0x08FD], 230.1),
    ("abb_b24", "voltageL1", [0xFFFF, 0xFFFF], None),
    ("abb_b24", "activePower", [0xFFFD, 0xB610], -1500.0),
    ("abb_b24", "activePower", [0x7FFF, 0xFFFF], None),
    ("abb_b24", "frequency", [0x1388], 50.0),
    ("abb_b24", "totalPhaseAngle", [0xFED4], -30.0),
    ("abb_b24", "importActiveEnergy", [0x0000, 0x0000, 0x075B, 0xCD15], 1234567.89),
    ("abb_b24", "netActiveEnergy", [0xFFFF, 0xFFFF, 0xFFFF, 0xFF9C], -1.0),
]


PROFILES = {profile.type: profile for profile in shipped_profiles()}


SMA = [0x534D, 0x4100] + [0] * 14  # "SMA", NUL padded (16 registers)
# SunSpec profiles: (type, name, raw words, the scale-factor register's word (None: the point
# has none), decoded value: a number, a text, None = "not available"). Words and scale
# factors as the SunSpec specification describes them: integers with a power of ten read
# beside them, 0x8000 / 0xFFFF / 0xFFFFFFFF not implemented, strings NUL padded.
SUNSPEC_VECTORS: list[tuple[str, str, list[int], int | None, float | str | None]] = []
for _type in ("sma_sunspec", "fronius_sunspec", "solaredge_sunspec"):
    SUNSPEC_VECTORS += [
        (_type, "voltageL1", [0x08FD], 0xFFFF, 230.1),  # 2301 x 10^-1 V
        (_type, "voltageL1", [0xFFFF], 0xFFFF, None),  # uint16 not implemented
        (_type, "acPower", [0x1A2C], 0x0000, 6700.0),
        (_type, "acPower", [0xFF9C], 0x0001, -1000.0),  # -100 x 10^1 W
        (_type, "acPower", [0x1A2C], 0x8000, None),  # the scale factor not implemented
        (_type, "acPower", [0x8000], 0x0000, None),
        (_type, "powerFactor", [0xFFA1], 0x0000, -0.95),  # -95 %
        (_type, "acEnergy", [0x0001, 0xE240], 0x0000, 123456.0),  # acc32 Wh
        (_type, "acEnergy", [0x0001, 0xE240], 0x0002, 12345600.0),
        (_type, "acEnergy", [0xFFFF, 0xFFFF], 0x0000, None),
        (_type, "maker", SMA, None, "SMA"),
        (_type, "serial", [0] * 16, None, None),  # an empty string: not available
        (_type, "operatingState", [0x0004], None, "MPPT"),
        (_type, "operatingState", [0xFFFF], None, None),
        (_type, "events", [0x0000, 0x0081], None, "GROUND_FAULT,OVER_TEMP"),
        (_type, "events", [0x0000, 0x0000], None, ""),
        (_type, "events", [0xFFFF, 0xFFFF], None, None),
    ]
for _type in ("sma_sunspec", "fronius_sunspec"):
    SUNSPEC_VECTORS += [
        (_type, "dcPower1", [0x0BB8], 0x0000, 3000.0),
        (_type, "dcVoltage2", [0x1770], 0xFFFF, 600.0),  # 6000 x 10^-1 V
        (_type, "mppt1Seconds", [0x0001, 0x5180], None, 86400.0),  # uint32, no scale factor
        (_type, "mppt1Temperature", [0xFFE7], None, -25.0),  # int16, no scale factor
        (_type, "mppt2State", [0x0004], None, "MPPT"),
        (_type, "mppt1Name", [0x4D50, 0x5054, 0x2031] + [0] * 5, None, "MPPT 1"),
        (_type, "m160.N", [0x0002], None, 2.0),
    ]
for _type, suffix in (("fronius_smart_meter_sunspec", ""), ("solaredge_sunspec", "")):
    SUNSPEC_VECTORS += [
        (_type, "frequency" + suffix, [0x1388], 0xFFFE, 50.0),  # 5000 x 10^-2 Hz
        (_type, "activePower", [0xFA24], 0x0000, -1500.0),
        (_type, "activePowerL2", [0xFA24], 0x0001, -15000.0),
        (_type, "importActiveEnergy", [0x0012, 0xD687], 0x0000, 1234567.0),
        (_type, "exportActiveEnergyL3", [0x0012, 0xD687], 0xFFFD, 1234.567),
        (_type, "meterEvents", [0x0000, 0x0004], None, "M_EVENT_Power_Failure"),
        (_type, "powerFactorL1", [0x005F], 0x0000, 0.95),
    ]
SUNSPEC_VECTORS += [
    # the scale factors themselves: int16 powers of ten, stored as they are
    ("fronius_smart_meter_sunspec", "m203.A_SF", [0xFFFE], None, -2.0),
    ("fronius_smart_meter_sunspec", "m203.A_SF", [0x8000], None, None),
    ("solaredge_sunspec", "m103.A_SF", [0xFFFE], None, -2.0),
    ("solaredge_sunspec", "vendorState", [0x0003], None, 3.0),
    ("fronius_smart_meter_sunspec", "maker", SMA, None, "SMA"),
    ("fronius_smart_meter_sunspec", "voltageL1", [0x08FD], 0xFFFF, 230.1),
    ("solaredge_sunspec", "maker_2", SMA, None, "SMA"),
]


@pytest.mark.parametrize(("type_", "name", "words", "sf", "value"), SUNSPEC_VECTORS)
def test_sunspec_golden_vector(
    type_: str, name: str, words: list[int], sf: int | None, value: float | str | None
) -> None:
    register = {r.name: r for r in PROFILES[type_].registers}[name]
    assert len(words) == register.words
    assert bool(register.scale_register) == (sf is not None)
    if register.is_text:
        assert decode_text(words, register) == value
        return
    power = None if sf is None or sf == 0x8000 else sf - 0x10000 if sf >= 0x8000 else sf
    decoded = decode(words, register, power)
    if value is None:
        assert decoded is None
    else:
        assert decoded == pytest.approx(value, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize(("type_", "name", "words", "value"), VECTORS)
def test_golden_vector(type_: str, name: str, words: list[int], value: float | None) -> None:
    profile = PROFILES[type_]
    register = {r.name: r for r in profile.registers}[name]
    assert len(words) == register.data_type.words
    decoded = decode(words, register)
    if value is None:
        assert decoded is None
    else:
        assert decoded == pytest.approx(value, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("profile", PROFILES.values(), ids=lambda p: p.type)
def test_every_profile_has_vectors_for_each_type_and_order(profile: Profile) -> None:
    by_name = {r.name: r for r in profile.registers}
    names = {name for type_, name, *_ in [*VECTORS, *SUNSPEC_VECTORS] if type_ == profile.type}
    covered = {_kind(by_name[name]) for name in names}
    used = {_kind(r) for r in profile.registers}
    assert len(names) >= 3
    assert used <= covered


def _kind(register: Register) -> tuple[object, ...]:
    """What a vector pins: type and order, and whether text, enum, bits or scale factor."""
    return (
        register.data_type,
        register.order,
        bool(register.enum),
        bool(register.bits),
        bool(register.scale_register),
    )
