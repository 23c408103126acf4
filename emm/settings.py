"""Settings: one typed object per service, read once from `EMM_*` environment variables.

`.dev.env` at the repository root holds the development values docker compose passes in.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from emm.errors import ConfigError

DEFAULT_POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
DEFAULT_INFLUX_URL = "http://127.0.0.1:8086"


class _Env:
    """Typed access to the environment with errors that name the variable."""

    def __init__(self, env: Mapping[str, str] | None) -> None:
        self.env = os.environ if env is None else env

    def text(self, name: str, default: str) -> str:
        value = self.env.get(name, "")
        return value if value != "" else default

    def integer(self, name: str, default: int, low: int = 0, high: int | None = None) -> int:
        text = self.env.get(name, "")
        if text == "":
            return default
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(f"{name}={text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            bound = f"{low}..{high}" if high is not None else f"at least {low}"
            raise ConfigError(f"{name}={value} is outside {bound}")
        return value

    def number(self, name: str, default: float, low: float = 0.0) -> float:
        text = self.env.get(name, "")
        if text == "":
            return default
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{name}={text!r} is not a number") from None
        if not value >= low:
            raise ConfigError(f"{name}={value} must be at least {low}")
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(name, default).lower()
        if value not in choices:
            raise ConfigError(f"{name}={value!r} must be one of {', '.join(choices)}")
        return value


@dataclass(frozen=True)
class SchedulerSettings:
    """`emm scheduler` (and `emm migrate`, which needs only the DSN)."""

    postgres_dsn: str
    amqp_url: str
    read_cron: str
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SchedulerSettings:
        e = _Env(env)
        return cls(
            postgres_dsn=e.text("EMM_POSTGRES_DSN", DEFAULT_POSTGRES_DSN),
            amqp_url=e.text("EMM_AMQP_URL", DEFAULT_AMQP_URL),
            read_cron=e.text("EMM_READ_CRON", "* * * * *"),
            log_level=e.text("EMM_LOG_LEVEL", "INFO"),
        )


@dataclass(frozen=True)
class WorkerSettings:
    """`emm worker`: how many jobs in flight, and how patient to be with a device."""

    amqp_url: str
    concurrency: int = 512
    read_timeout_s: float = 1.0
    read_attempts: int = 3
    connect_timeout_s: float = 2.0
    idle_close_s: float = 60.0
    offline_after_ticks: int = 3
    offline_backoff_max_s: float = 60.0
    outbox_max: int = 50_000
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerSettings:
        e = _Env(env)
        return cls(
            amqp_url=e.text("EMM_AMQP_URL", DEFAULT_AMQP_URL),
            concurrency=e.integer("EMM_WORKER_CONCURRENCY", 512, low=1, high=65535),
            read_timeout_s=e.number("EMM_READ_TIMEOUT_S", 1.0, low=0.01),
            read_attempts=e.integer("EMM_READ_ATTEMPTS", 3, low=1, high=100),
            connect_timeout_s=e.number("EMM_CONNECT_TIMEOUT_S", 2.0, low=0.01),
            idle_close_s=e.number("EMM_IDLE_CLOSE_S", 60.0, low=0.0),
            offline_after_ticks=e.integer("EMM_OFFLINE_AFTER_TICKS", 3, low=1),
            offline_backoff_max_s=e.number("EMM_OFFLINE_BACKOFF_MAX_S", 60.0, low=0.0),
            outbox_max=e.integer("EMM_WORKER_OUTBOX_MAX", 50_000, low=1),
            log_level=e.text("EMM_LOG_LEVEL", "INFO"),
        )


@dataclass(frozen=True)
class WriterSettings:
    """`emm writer`: where to write and how to batch."""

    amqp_url: str
    influx_url: str
    influx_api: str = "v2"
    influx_token: str = ""
    influx_org: str = ""
    influx_bucket: str = "energy"
    batch_size: int = 5000
    flush_interval_ms: int = 200
    write_timeout_s: float = 10.0
    retry_max_s: float = 30.0
    stats_file: str = ""  # benchmarks: append "written_ms tick_ms count" per tick per batch
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WriterSettings:
        e = _Env(env)
        return cls(
            amqp_url=e.text("EMM_AMQP_URL", DEFAULT_AMQP_URL),
            influx_url=e.text("EMM_INFLUX_URL", DEFAULT_INFLUX_URL).rstrip("/"),
            influx_api=e.choice("EMM_INFLUX_API", "v2", ("v1", "v2")),
            influx_token=e.text("EMM_INFLUX_TOKEN", ""),
            influx_org=e.text("EMM_INFLUX_ORG", ""),
            influx_bucket=e.text("EMM_INFLUX_BUCKET", "energy"),
            batch_size=e.integer("EMM_WRITER_BATCH_SIZE", 5000, low=1, high=65535),
            flush_interval_ms=e.integer("EMM_WRITER_FLUSH_INTERVAL_MS", 200, low=1),
            write_timeout_s=e.number("EMM_INFLUX_TIMEOUT_S", 10.0, low=0.1),
            retry_max_s=e.number("EMM_WRITER_RETRY_MAX_S", 30.0, low=0.1),
            stats_file=e.text("EMM_WRITER_STATS_FILE", ""),
            log_level=e.text("EMM_LOG_LEVEL", "INFO"),
        )


@dataclass(frozen=True)
class SimulatorSettings:
    """`emm simulator`: where to listen."""

    host: str = "0.0.0.0"
    port: int = 5020
    step_s: float = 1.0
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SimulatorSettings:
        e = _Env(env)
        return cls(
            host=e.text("EMM_SIMULATOR_HOST", "0.0.0.0"),
            port=e.integer("EMM_SIMULATOR_PORT", 5020, low=0, high=65535),
            step_s=e.number("EMM_SIMULATOR_STEP_S", 1.0, low=0.001),
            log_level=e.text("EMM_LOG_LEVEL", "INFO"),
        )


@dataclass(frozen=True)
class MigrateSettings:
    """`emm migrate`: the database and the virtual meter to seed."""

    postgres_dsn: str
    seed_host: str = "simulator"
    seed_port: int = 502
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> MigrateSettings:
        e = _Env(env)
        return cls(
            postgres_dsn=e.text("EMM_POSTGRES_DSN", DEFAULT_POSTGRES_DSN),
            seed_host=e.text("EMM_SEED_HOST", "simulator"),
            seed_port=e.integer("EMM_SEED_PORT", 502, low=1, high=65535),
            log_level=e.text("EMM_LOG_LEVEL", "INFO"),
        )
