"""emm.settings: defaults stated once, and every bad value refused in one line naming it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from emm.errors import ConfigError, Misconfigured
from emm.settings import (
    CheckSettings,
    MigrateSettings,
    SchedulerSettings,
    SimulatorSettings,
    StatusSettings,
    WorkerSettings,
    WriterSettings,
)
from tests.helpers import unavailable

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {
    "scheduler": SchedulerSettings,
    "worker": WorkerSettings,
    "writer": WriterSettings,
    "simulator": SimulatorSettings,
    "migrate": MigrateSettings,
    "status": StatusSettings,
    "check": CheckSettings,
}
Settings = (
    SchedulerSettings
    | WorkerSettings
    | WriterSettings
    | SimulatorSettings
    | MigrateSettings
    | StatusSettings
    | CheckSettings
)

AMQP = "amqp://guest:guest@127.0.0.1:5672/%2F"
DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
LEVELS = "must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
LOOPS = "must be one of uvloop, asyncio"
AMQP_URL = "must be an amqp:// or amqps:// URL with a host"
HTTP_URL = "must be an http:// or https:// URL with a host"
PG_DSN = "must be a postgresql:// URL or libpq key=value pairs"


def whole(low: int, high: int | None = None) -> str:
    return (
        f"must be a whole number from {low} to {high}"
        if high
        else f"must be a whole number at least {low}"
    )


def finite(low: float) -> str:
    return f"must be a finite number at least {low}"


CRON_FIELDS = "expected 5 (minute hour day month weekday) or 6 (a leading seconds field)"


def test_worker_defaults() -> None:
    assert WorkerSettings.from_env({}).model_dump() == {
        "log_level": "INFO",
        "log_format": "text",
        "event_loop": "uvloop",
        "health_file": "",
        "health_stall_s": 60.0,
        "metrics_port": 9100,
        "log_summary_s": 300.0,
        "amqp_url": AMQP,
        "concurrency": 512,
        "read_timeout_s": 1.0,
        "read_attempts": 3,
        "connect_timeout_s": 2.0,
        "idle_close_s": 60.0,
        "offline_after_ticks": 3,
        "offline_backoff_max_s": 60.0,
        "outbox_max": 50_000,
        "drain_s": 10.0,
    }


@pytest.mark.parametrize(
    ("cls", "defaults"),
    [
        (SchedulerSettings, {"postgres_dsn": DSN, "amqp_url": AMQP, "read_cron": "* * * * *"}),
        (
            WriterSettings,
            {
                "amqp_url": AMQP,
                "influx_url": "http://127.0.0.1:8086",
                "influx_api": "v2",
                "influx_token": "",
                "influx_org": "",
                "influx_bucket": "energy",
                "read_cron": "* * * * *",
                "batch_size": 5000,
                "batch_bytes": 8_000_000,
                "flush_interval_ms": 200,
                "write_timeout_s": 10.0,
                "retry_max_s": 30.0,
                "max_age_s": 604800.0,
                "max_future_s": 600.0,
                "stats_file": "",
            },
        ),
        (SimulatorSettings, {"host": "127.0.0.1", "port": 5020, "step_s": 1.0}),
        (MigrateSettings, {"postgres_dsn": DSN, "seed_host": "127.0.0.1", "seed_port": 5020}),
    ],
)
def test_defaults(cls: type[Settings], defaults: dict[str, object]) -> None:
    common: dict[str, object] = {"log_level": "INFO", "log_format": "text"}
    if cls is not MigrateSettings:
        common |= {"event_loop": "uvloop", "health_file": "", "health_stall_s": 60.0}
        common |= {"metrics_port": 9100, "log_summary_s": 300.0}
    assert cls.from_env({}).model_dump() == common | defaults


@pytest.mark.parametrize("cls", SERVICES.values())
def test_built_directly_or_from_an_empty_environment_alike(cls: type[Settings]) -> None:
    assert cls() == cls.from_env({})


def test_blanks_around_a_value_are_ignored() -> None:
    settings = WorkerSettings.from_env({"EMM_READ_ATTEMPTS": " 5\n"})
    assert settings.read_attempts == 5


def test_a_variable_set_but_empty_is_refused_naming_it() -> None:
    env = {"EMM_POSTGRES_DSN": "", "EMM_LOG_LEVEL": "  ", "EMM_READ_CRON": "* * * * *"}
    with pytest.raises(Misconfigured) as info:
        SchedulerSettings.from_env(env)
    assert str(info.value) == (
        "EMM_LOG_LEVEL is set but empty: give it a value, or unset it to use the default; "
        "EMM_POSTGRES_DSN is set but empty: give it a value, or unset it to use the default"
    )


def test_empty_is_the_default_where_the_default_is_empty() -> None:
    env = {"EMM_INFLUX_TOKEN": "", "EMM_INFLUX_ORG": " ", "EMM_WRITER_STATS_FILE": ""}
    assert WriterSettings.from_env(env) == WriterSettings()


SAME = object()  # the value as given


@pytest.mark.parametrize(
    ("cls", "variable", "value", "expected"),
    [
        (WorkerSettings, "EMM_LOG_LEVEL", "debug", "DEBUG"),
        (WorkerSettings, "EMM_LOG_LEVEL", "Critical", "CRITICAL"),
        (WorkerSettings, "EMM_EVENT_LOOP", " AsyncIO ", "asyncio"),
        (WriterSettings, "EMM_INFLUX_API", "V1", "v1"),
        (WriterSettings, "EMM_INFLUX_URL", "http://influx:8086/", "http://influx:8086"),
        (WriterSettings, "EMM_INFLUX_URL", "https://cloud.example", SAME),
        (WorkerSettings, "EMM_AMQP_URL", "amqps://u:p@mq.example/vh", SAME),
        (WorkerSettings, "EMM_AMQP_URL", "amqp://unused", SAME),
        (WorkerSettings, "EMM_AMQP_URL", f"{AMQP}?heartbeat=10", SAME),
        (MigrateSettings, "EMM_POSTGRES_DSN", "postgres://u@db/emm", SAME),
        (MigrateSettings, "EMM_POSTGRES_DSN", "postgresql:///emm", SAME),
        (MigrateSettings, "EMM_POSTGRES_DSN", "host=db dbname=emm user=emm", SAME),
        (MigrateSettings, "EMM_POSTGRES_DSN", "dbname='my db'", SAME),
        (SchedulerSettings, "EMM_READ_CRON", "*/10 * * * * *", SAME),
        (SchedulerSettings, "EMM_READ_CRON", "0 0 29 2 *", SAME),
        (WorkerSettings, "EMM_WORKER_CONCURRENCY", "65535", 65535),
        (WorkerSettings, "EMM_READ_TIMEOUT_S", "0.01", 0.01),
        (WorkerSettings, "EMM_IDLE_CLOSE_S", "0", 0.0),
        (WriterSettings, "EMM_INFLUX_TIMEOUT_S", "2.5", 2.5),
        (WriterSettings, "EMM_WRITER_STATS_FILE", "/tmp/stats", SAME),
        (SimulatorSettings, "EMM_SIMULATOR_PORT", "0", 0),
        (SimulatorSettings, "EMM_SIMULATOR_HOST", "127.0.0.1", SAME),
        (MigrateSettings, "EMM_SEED_PORT", "1502", 1502),
    ],
)
def test_good_values(cls: type[Settings], variable: str, value: str, expected: object) -> None:
    (field,) = (f for f in cls.model_fields if cls.variable(f) == variable)
    assert getattr(cls.from_env({variable: value}), field) == (
        value if expected is SAME else expected
    )


@pytest.mark.parametrize(
    ("cls", "variable", "value", "allowed"),
    [
        (WorkerSettings, "EMM_LOG_LEVEL", "verbose", LEVELS),
        (MigrateSettings, "EMM_LOG_LEVEL", "warn", LEVELS),
        (WorkerSettings, "EMM_EVENT_LOOP", "foo", LOOPS),
        (SimulatorSettings, "EMM_EVENT_LOOP", "trio", LOOPS),
        (WorkerSettings, "EMM_READ_TIMEOUT_S", "inf", finite(0.01)),
        (WorkerSettings, "EMM_READ_TIMEOUT_S", "-inf", finite(0.01)),
        (WorkerSettings, "EMM_READ_TIMEOUT_S", "nan", finite(0.01)),
        (WorkerSettings, "EMM_READ_TIMEOUT_S", "0", finite(0.01)),
        (WorkerSettings, "EMM_READ_TIMEOUT_S", "1s", finite(0.01)),
        (WorkerSettings, "EMM_CONNECT_TIMEOUT_S", "infinity", finite(0.01)),
        (WorkerSettings, "EMM_IDLE_CLOSE_S", "-1", finite(0)),
        (WorkerSettings, "EMM_OFFLINE_BACKOFF_MAX_S", "nan", finite(0)),
        (WorkerSettings, "EMM_WORKER_CONCURRENCY", "0", whole(1, 65535)),
        (WorkerSettings, "EMM_WORKER_CONCURRENCY", "65536", whole(1, 65535)),
        (WorkerSettings, "EMM_WORKER_CONCURRENCY", "many", whole(1, 65535)),
        (WorkerSettings, "EMM_WORKER_CONCURRENCY", "1.5", whole(1, 65535)),
        (WorkerSettings, "EMM_READ_ATTEMPTS", "101", whole(1, 100)),
        (WorkerSettings, "EMM_OFFLINE_AFTER_TICKS", "0", whole(1)),
        (WorkerSettings, "EMM_WORKER_OUTBOX_MAX", "-5", whole(1)),
        (WorkerSettings, "EMM_AMQP_URL", "not a url", AMQP_URL),
        (WorkerSettings, "EMM_AMQP_URL", "http://127.0.0.1:5672/", AMQP_URL),
        (WorkerSettings, "EMM_AMQP_URL", "amqp://", AMQP_URL),
        (WorkerSettings, "EMM_AMQP_URL", "amqp:///%2F", AMQP_URL),
        (WorkerSettings, "EMM_AMQP_URL", "amqp://host:port/", AMQP_URL),
        (SchedulerSettings, "EMM_AMQP_URL", "127.0.0.1:5672", AMQP_URL),
        (WriterSettings, "EMM_INFLUX_URL", "influxdb:8086", HTTP_URL),
        (WriterSettings, "EMM_INFLUX_URL", "ftp://influxdb", HTTP_URL),
        (WriterSettings, "EMM_INFLUX_URL", "http://", HTTP_URL),
        (WriterSettings, "EMM_INFLUX_API", "v3", "must be one of v1, v2"),
        (WriterSettings, "EMM_WRITER_BATCH_SIZE", "0", whole(1, 65535)),
        (WriterSettings, "EMM_WRITER_FLUSH_INTERVAL_MS", "0", whole(1)),
        (WriterSettings, "EMM_INFLUX_TIMEOUT_S", "0.01", finite(0.1)),
        (WriterSettings, "EMM_WRITER_RETRY_MAX_S", "inf", finite(0.1)),
        (SchedulerSettings, "EMM_POSTGRES_DSN", "mysql://db/emm", PG_DSN),
        (MigrateSettings, "EMM_POSTGRES_DSN", "the database", PG_DSN),
        (MigrateSettings, "EMM_SEED_PORT", "0", whole(1, 65535)),
        (SimulatorSettings, "EMM_SIMULATOR_PORT", "70000", whole(0, 65535)),
        (SimulatorSettings, "EMM_SIMULATOR_STEP_S", "0", finite(0.001)),
    ],
)
def test_bad_values(cls: type[Settings], variable: str, value: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        cls.from_env({variable: value})
    assert str(info.value) == f"{variable}={value!r}: {allowed}"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0 0 31 2 *", "EMM_READ_CRON='0 0 31 2 *': never fires (no tick within 5 years)"),
        ("* * *", f"EMM_READ_CRON='* * *': has 3 fields; {CRON_FIELDS}"),
        ("61 * * * *", f"EMM_READ_CRON='61 * * * *': not a valid cron expression; {CRON_FIELDS}"),
    ],
)
def test_bad_cron(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        SchedulerSettings.from_env({"EMM_READ_CRON": value})
    assert str(info.value) == message


def test_several_bad_values_are_still_one_line() -> None:
    env = {"EMM_LOG_LEVEL": "verbose", "EMM_INFLUX_API": "v3"}
    with pytest.raises(ConfigError) as info:
        WriterSettings.from_env(env)
    assert str(info.value) == (
        f"EMM_LOG_LEVEL='verbose': {LEVELS}; EMM_INFLUX_API='v3': must be one of v1, v2"
    )


def test_env_given_is_all_that_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMM_WORKER_CONCURRENCY", "7")
    assert WorkerSettings.from_env({}).concurrency == 512
    assert WorkerSettings(amqp_url=AMQP).concurrency == 512  # built directly: no environment
    assert WorkerSettings.from_env().concurrency == 7


def test_variables_of_other_services_are_not_this_ones_business() -> None:
    env = {"EMM_INFLUX_URL": "not checked by the worker", "EMM_TEST_POSTGRES_DSN": "x"}
    assert WorkerSettings.from_env(env) == WorkerSettings()


def test_settings_are_frozen() -> None:
    settings = WorkerSettings()
    with pytest.raises(ValidationError):
        settings.concurrency = 1  # type: ignore[misc]


def test_built_directly_the_same_rules_hold() -> None:
    with pytest.raises(ValidationError):
        WorkerSettings(read_timeout_s=float("inf"))
    with pytest.raises(ValidationError):
        SchedulerSettings(read_cron="0 0 31 2 *")


def _dotenv(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


@pytest.mark.parametrize("cls", SERVICES.values())
def test_dev_env_is_accepted(cls: type[Settings]) -> None:
    env = _dotenv(ROOT / ".dev.env")
    settings = cls.from_env(env)
    for field in type(settings).model_fields:
        if (variable := cls.variable(field)) in env:
            assert str(getattr(settings, field)) == env[variable]


def _variables(cls: type[Settings]) -> set[str]:
    return {cls.variable(field) for field in cls.model_fields}


def _readme_table() -> dict[str, tuple[set[str], str]]:
    """variable -> (services using it, default as written)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Settings") :]
    rows: dict[str, tuple[set[str], str]] = {}
    for line in section.splitlines()[1:]:
        if line.startswith("## "):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`EMM_"):
            continue
        names = re.findall(r"`(EMM_\w+)`", cells[0])
        used_by = {s.strip() for s in cells[1].split(",")}
        defaults = re.findall(r"`([^`]*)`", cells[2]) or [""] * len(names)
        assert len(defaults) == len(names), line
        for name, default in zip(names, defaults, strict=True):
            rows[name] = (set(SERVICES) if used_by == {"all"} else used_by, default)
    return rows


def test_readme_table_lists_every_setting_with_its_users() -> None:
    table = _readme_table()
    for variable, (used_by, _) in table.items():
        assert used_by == {s for s, cls in SERVICES.items() if variable in _variables(cls)}, (
            variable
        )
    assert set(table) == set().union(*(_variables(cls) for cls in SERVICES.values()))


@pytest.mark.parametrize("service", SERVICES)
def test_readme_table_states_the_defaults(service: str) -> None:
    table = _readme_table()
    cls = SERVICES[service]
    for field, value in cls().model_dump().items():
        written = table[cls.variable(field)][1]
        if isinstance(value, float):
            assert float(written) == value, field
        else:
            assert written == str(value), field


EMM = Path(sys.executable).with_name("emm")


@pytest.mark.parametrize(
    ("service", "variable", "value", "allowed"),
    [
        ("worker", "EMM_LOG_LEVEL", "verbose", LEVELS),
        ("worker", "EMM_EVENT_LOOP", "foo", LOOPS),
        ("worker", "EMM_READ_TIMEOUT_S", "inf", finite(0.01)),
        ("scheduler", "EMM_READ_CRON", "0 0 31 2 *", "never fires (no tick within 5 years)"),
        ("writer", "EMM_AMQP_URL", "not a url", AMQP_URL),
        ("simulator", "EMM_EVENT_LOOP", "foo", LOOPS),
    ],
)
@pytest.mark.parametrize("how", ["python -m", "emm"])
def test_a_service_with_a_bad_setting_says_so_in_one_line_and_exits_78(
    how: str, service: str, variable: str, value: str, allowed: str
) -> None:
    if how == "emm" and not EMM.exists():
        unavailable(f"no {EMM} (package not installed)")
    command = [sys.executable, "-m", service] if how == "python -m" else [str(EMM), service]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMM_")}
    env |= {variable: value, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [f"emm {service}: {variable}={value!r}: {allowed}"]
    assert done.returncode == 78
    assert done.stdout == ""


def test_secrets_are_read_from_their_files(tmp_path: Path) -> None:
    (tmp_path / "amqp").write_text("amqp://worker:s3cret@rabbitmq:5672/%2F\n")
    (tmp_path / "dsn").write_text("postgresql://emm_scheduler:pw@postgres:5432/emm")
    (tmp_path / "token").write_text("  writer-token\n")
    scheduler = SchedulerSettings.from_env(
        {
            "EMM_AMQP_URL_FILE": str(tmp_path / "amqp"),
            "EMM_POSTGRES_DSN_FILE": str(tmp_path / "dsn"),
        }
    )
    assert scheduler.amqp_url == "amqp://worker:s3cret@rabbitmq:5672/%2F"
    assert scheduler.postgres_dsn == "postgresql://emm_scheduler:pw@postgres:5432/emm"
    writer = WriterSettings.from_env({"EMM_INFLUX_TOKEN_FILE": str(tmp_path / "token")})
    assert writer.influx_token == "writer-token"
    # a service ignores the secret files of settings it does not have
    worker = WorkerSettings.from_env(
        {"EMM_AMQP_URL_FILE": str(tmp_path / "amqp"), "EMM_POSTGRES_DSN_FILE": "/nonexistent"}
    )
    assert worker.amqp_url == "amqp://worker:s3cret@rabbitmq:5672/%2F"


def test_secret_file_errors_name_the_file_never_the_secret(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing")
    with pytest.raises(ConfigError) as raised:
        WorkerSettings.from_env({"EMM_AMQP_URL_FILE": missing})
    assert str(raised.value) == (
        f"EMM_AMQP_URL_FILE={missing!r}: cannot be read (No such file or directory)"
    )
    (tmp_path / "amqp").write_text("http://user:s3cret@rabbitmq/")
    with pytest.raises(ConfigError) as raised:
        WorkerSettings.from_env({"EMM_AMQP_URL_FILE": str(tmp_path / "amqp")})
    assert str(raised.value) == f"EMM_AMQP_URL_FILE={str(tmp_path / 'amqp')!r}: {AMQP_URL}"
    with pytest.raises(ConfigError) as raised:
        WorkerSettings.from_env({"EMM_AMQP_URL_FILE": str(tmp_path / "amqp"), "EMM_AMQP_URL": AMQP})
    assert str(raised.value) == "EMM_AMQP_URL and EMM_AMQP_URL_FILE are both set: set one"


def test_a_service_with_an_empty_variable_names_it_and_exits_78() -> None:
    if not EMM.exists():
        unavailable(f"no {EMM} (package not installed)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMM_")}
    env |= {"EMM_POSTGRES_DSN": "", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [str(EMM), "scheduler"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.stderr.splitlines() == [
        "emm scheduler: EMM_POSTGRES_DSN is set but empty: give it a value, or unset it to use "
        "the default"
    ]
    assert (done.returncode, done.stdout) == (78, "")
