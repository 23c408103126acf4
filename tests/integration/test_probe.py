"""`emm probe` against simulated devices: a SunSpec inverter's chain (and `--write`), and meters
served in a wrong word order or shifted by one, which the probe must name exactly."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import psycopg2
import pytest

from devservices.net import free_port, port_open, wait_for
from devservices.processes import Processes, emm_command
from emm.profiles import shipped_profile

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

# (profile, --serve-order, --serve-shift): what each simulated device is; the probe must
# name the profile, the order and the offset
DEVICES = [
    ("sdm630", "CDAB", "1"),
    ("janitza_umg604", "ABCD", "-1"),
    ("sdm72d_m2", "DCBA", "0"),
]
NO_POSTGRES = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"


@pytest.fixture(scope="module")
def ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """One simulator per device (each on its own port), and a SolarEdge SunSpec inverter."""
    processes = Processes(tmp_path_factory.mktemp("probe"))
    ports: dict[str, int] = {}
    try:
        for profile, order, shift in [*DEVICES, ("solaredge_sunspec", "", "0")]:
            port = ports[profile] = free_port()
            layout = ["--serve-order", order] if order else []
            if profile == "sdm630":  # a gateway of two meters, for --scan
                layout += ["--meters", "2"]
            processes.start(
                f"simulator-{profile}",
                ["simulator", "--profile", profile, *layout, "--serve-shift", shift],
                {"EMM_SIMULATOR_HOST": "127.0.0.1", "EMM_SIMULATOR_PORT": str(port)},
            )
        # a SunSpec inverter behind a transparent serial gateway: RTU frames over TCP
        port = ports["rtu"] = free_port()
        processes.start(
            "simulator-rtu",
            ["simulator", "--profile", "fronius_sunspec", "--framing", "rtu"],
            {"EMM_SIMULATOR_HOST": "127.0.0.1", "EMM_SIMULATOR_PORT": str(port)},
        )
        for port in ports.values():
            wait_for(lambda port=port: port_open("127.0.0.1", port), 15)
        yield ports
    finally:
        processes.stop_all()


def emm(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*emm_command(), *args],
        env={**os.environ, "EMM_POSTGRES_DSN": dsn},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(("profile", "order", "shift"), DEVICES)
def test_probe_finds_profile_order_and_offset(
    ports: dict[str, int], profile: str, order: str, shift: str
) -> None:
    done = emm(NO_POSTGRES, "probe", "--host", f"127.0.0.1:{ports[profile]}")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"best: {profile}, order {order}, offset {int(shift):+d} (score ")
    assert any(line.startswith("runner-up: ") for line in lines)
    assert "  frequency " in done.stdout
    # within the default budget of 300 requests
    sent = int(done.stderr.split()[0])
    assert 0 < sent <= 300


def test_probe_stays_within_its_budget(ports: dict[str, int]) -> None:
    done = emm(NO_POSTGRES, "probe", "--host", f"127.0.0.1:{ports['sdm630']}", "--budget", "5")
    assert done.stderr.splitlines()[-1] == (
        "5 request(s) (the request budget ran out: not every profile was tried)"
    )


def test_probe_reads_a_sunspec_chain_and_writes_its_type(
    ports: dict[str, int], pg_dsn: str
) -> None:
    assert emm(pg_dsn, "migrate", "--no-profiles", "--no-seed").returncode == 0
    port = ports["solaredge_sunspec"]
    done = emm(pg_dsn, "probe", "--host", "127.0.0.1", "--port", str(port), "--write")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "SunSpec device: SunS at 40000; models 1@40002, 103@40069, 1@40121, 203@40188",
        "maker 'SolarEdge', model 'SE10K', serial 'serial-0'",
        "register map: 125 registers as type 'solaredge_se10k'",
        "stored type 'solaredge_se10k' (125 registers); meter added",
    ]
    # the walk: three bases at most, one header per model, the end model, the common model
    assert done.stderr.splitlines()[-1] == "7 request(s)"
    shipped = shipped_profile("solaredge_sunspec")
    assert shipped is not None
    with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT measurement_name, register_address, data_type, scale_register, "
            "string_length FROM registers WHERE type = 'solaredge_se10k' ORDER BY id"
        )
        stored = cur.fetchall()
        cur.execute("SELECT host, port, slave_address, type, description FROM energy_meters")
        meters = cur.fetchall()
    conn.close()
    # the map built from the wire is the shipped profile's, row for row
    assert stored == [
        (r.name, r.address, int(r.data_type), r.scale_register or None, r.length or None)
        for r in shipped.registers
    ]
    assert meters == [("127.0.0.1", port, 1, "solaredge_se10k", "SolarEdge SE10K serial-0")]


def test_scan_lists_the_unit_ids_that_answer(ports: dict[str, int]) -> None:
    done = emm(NO_POSTGRES, "probe", "--host", f"127.0.0.1:{ports['sdm630']}", "--scan", "1-3")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "unit ids that answer: 1, 2\n"


def test_probe_speaks_rtu_over_tcp(ports: dict[str, int]) -> None:
    address = f"127.0.0.1:{ports['rtu']}"
    done = emm(NO_POSTGRES, "probe", "--host", address, "--framing", "rtu-over-tcp")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "SunSpec device: SunS at 40000; models 1@40002, 103@40070, 120@40122, 121@40150, "
        "122@40182, 123@40228, 160@40254",
        "maker 'Fronius', model 'Symo 10.0-3-M', serial 'serial-0'",
        "register map: 72 registers as type 'fronius_symo_10_0_3_m'",
    ]
