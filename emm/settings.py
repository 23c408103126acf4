"""Settings: one typed object per service, read once from `EMM_*` environment variables.

Each field states its default and what it allows once; pydantic-settings reads the variable that
bears its name (`log_level` is `EMM_LOG_LEVEL`), or the one its `validation_alias` names. Blanks
around a value are ignored. A variable set but empty is refused unless its default is empty too
(`EMM_INFLUX_TOKEN=`): `EMM_POSTGRES_DSN=` is a slip, and silently using the default database
would hide it. `from_env` is the one place that reads the environment, and it turns every bad
value into one `Misconfigured` line naming the variable and what it allows. Building a class
directly (as tests do) validates the same way and reads no environment at all.

A secret can come from a file instead: `EMM_AMQP_URL_FILE`, `EMM_POSTGRES_DSN_FILE` and
`EMM_INFLUX_TOKEN_FILE` name a file whose contents (blanks around them ignored) are the value, as
container secrets are handed over; setting both a variable and its `_FILE` is refused. A bad value
read from a file is reported by the file's name, never by its contents.

`.dev.env` at the repository root holds the development values docker compose passes in (no
secrets: compose generates those on first start).
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping
from typing import Annotated, Literal, Self, get_args, get_origin

import annotated_types
from pydantic import AfterValidator, BeforeValidator, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from emm.errors import ConfigError, Misconfigured
from emm.log import LogFormat
from emm.schedule import CronSchedule

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
EventLoop = Literal["uvloop", "asyncio"]
InfluxApi = Literal["v1", "v2"]


def _url_with_host(schemes: tuple[str, ...]) -> AfterValidator:
    """A check that the value is a URL of one of `schemes` naming a host."""
    allowed = " or ".join(f"{scheme}://" for scheme in schemes)

    def check(value: str) -> str:
        try:
            parts = urllib.parse.urlsplit(value)
            host = parts.hostname
            parts.port  # noqa: B018 -- raises ValueError on a port that is not a number
        except ValueError:
            host = None
        if parts.scheme.lower() not in schemes or not host:
            raise ValueError(f"must be an {allowed} URL with a host")
        return value

    return AfterValidator(check)


# libpq's other form, `host=... dbname=...`: libpq itself judges the rest when connecting.
_LIBPQ_KEYWORDS = re.compile(r"\s*[a-z_]+\s*=")


def _check_dsn(value: str) -> str:
    scheme = urllib.parse.urlsplit(value).scheme.lower() if "://" in value else ""
    if scheme in ("postgresql", "postgres") or (not scheme and _LIBPQ_KEYWORDS.match(value)):
        return value
    raise ValueError("must be a postgresql:// URL or libpq key=value pairs")


def _check_cron(value: str) -> str:
    try:
        CronSchedule(value, setting="EMM_READ_CRON")
    except ConfigError as exc:
        # Its message already names the variable: pass it through whole.
        raise PydanticCustomError("emm_config", "{message}", {"message": str(exc)}) from None
    return value


# Choices are accepted in any case.
_UPPER = BeforeValidator(lambda v: v.upper() if isinstance(v, str) else v)
_LOWER = BeforeValidator(lambda v: v.lower() if isinstance(v, str) else v)


AmqpUrl = Annotated[str, _url_with_host(("amqp", "amqps"))]
WebUrl = Annotated[str, _url_with_host(("http", "https")), AfterValidator(lambda v: v.rstrip("/"))]
_WEB_URL_CHECK = _url_with_host(("http", "https")).func
# empty: none given (the command derives one)
WebUrlOrNone = Annotated[str, AfterValidator(lambda v: v and _WEB_URL_CHECK(v).rstrip("/"))]
PostgresDsn = Annotated[str, AfterValidator(_check_dsn)]
Cron = Annotated[str, AfterValidator(_check_cron)]
Seconds = Annotated[float, Field(allow_inf_nan=False)]


# The settings that hold a secret, and so may be read from the file `<variable>_FILE` names.
SECRET_FIELDS = frozenset({"amqp_url", "postgres_dsn", "influx_token"})
FILE_SUFFIX = "_FILE"


def read_secret_files(env: Mapping[str, str], variables: tuple[str, ...]) -> dict[str, str]:
    """The value of each of `variables` whose `_FILE` variable is set in `env`, read from that
    file (blanks around it stripped); ConfigError naming the variable if both are set or the
    file cannot be read."""
    values: dict[str, str] = {}
    for variable in variables:
        path = env.get(variable + FILE_SUFFIX, "").strip()
        if not path:
            continue
        if env.get(variable, "").strip():
            raise ConfigError(f"{variable} and {variable}{FILE_SUFFIX} are both set: set one")
        try:
            with open(path, encoding="utf-8") as file:
                values[variable] = file.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError(
                f"{variable}{FILE_SUFFIX}={path!r}: cannot be read ({reason})"
            ) from None
    return values


class _EnvMapping(EnvSettingsSource):
    """`EMM_*` variables from a given mapping instead of `os.environ`."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._env = env
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        values = ((name, value.strip()) for name, value in self._env.items())
        return {name.lower(): value for name, value in values if value}


class _Settings(BaseSettings):
    """What every service reads: `EMM_LOG_LEVEL`, `EMM_LOG_FORMAT`."""

    model_config = SettingsConfigDict(
        env_prefix="EMM_", frozen=True, validate_by_name=True, extra="forbid"
    )

    log_level: Annotated[LogLevel, _UPPER] = "INFO"
    log_format: Annotated[LogFormat, _LOWER] = "text"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only `from_env` reads the environment; a class built directly gets what it is given.
        return (init_settings,)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        """The settings from `env` (default: the process environment); raises Misconfigured."""
        env = os.environ if env is None else env
        secrets = tuple(cls.variable(field) for field in cls.model_fields if field in SECRET_FIELDS)
        env = {**env, **read_secret_files(env, secrets)}
        problems = cls._empty(env)
        try:
            settings = cls(**_EnvMapping(cls, env)())
        except ValidationError as exc:
            problems += [_explain(cls, e, env) for e in exc.errors()]
        if problems:
            raise Misconfigured("; ".join(problems))
        return settings

    @classmethod
    def _empty(cls, env: Mapping[str, str]) -> list[str]:
        """A line for each variable set but empty whose default is not empty."""
        return [
            f"{variable} is set but empty: give it a value, or unset it to use the default"
            for name, field in cls.model_fields.items()
            if field.default != ""
            and (variable := cls.variable(name)) in env
            and not env[variable].strip()
        ]

    @classmethod
    def variable(cls, field: str) -> str:
        """The environment variable that sets `field`."""
        alias = cls.model_fields[field].validation_alias
        return alias if isinstance(alias, str) else f"EMM_{field.upper()}"


class _Service(_Settings):
    """What every long-running service reads: `EMM_EVENT_LOOP`, `EMM_METRICS_PORT`,
    `EMM_LOG_SUMMARY_S`, and where its health goes."""

    event_loop: Annotated[EventLoop, _LOWER] = "uvloop"
    # empty: `emm.health.default_path` (one service per container needs no setting)
    health_file: str = ""
    health_stall_s: Seconds = Field(60.0, ge=1)
    # 9100: what deploy/kubernetes scrapes; 0 turns the endpoint off (see `emm.metrics`)
    metrics_port: int = Field(9100, ge=0, le=65535)
    log_summary_s: Seconds = Field(300.0, ge=1)


class _Amqp(_Settings):
    """RabbitMQ: `EMM_AMQP_URL`."""

    amqp_url: AmqpUrl = "amqp://guest:guest@127.0.0.1:5672/%2F"


class _Postgres(_Settings):
    """PostgreSQL: `EMM_POSTGRES_DSN`."""

    postgres_dsn: PostgresDsn = "postgresql://postgres@127.0.0.1:5432/postgres"


class _ReadCron(_Settings):
    """When meters are read: `EMM_READ_CRON` (the writer counts the ticks a gap missed on it)."""

    read_cron: Cron = "* * * * *"


class SchedulerSettings(_Service, _Amqp, _Postgres, _ReadCron):
    """`emm scheduler`: where the meters are, where the jobs go, and when."""


class WorkerSettings(_Service, _Amqp):
    """`emm worker`: how many jobs in flight, and how patient to be with a device."""

    concurrency: int = Field(512, ge=1, le=65535, validation_alias="EMM_WORKER_CONCURRENCY")
    read_timeout_s: Seconds = Field(1.0, ge=0.01)
    read_attempts: int = Field(3, ge=1, le=100)
    connect_timeout_s: Seconds = Field(2.0, ge=0.01)
    idle_close_s: Seconds = Field(60.0, ge=0)
    offline_after_ticks: int = Field(3, ge=1)
    offline_backoff_max_s: Seconds = Field(60.0, ge=0)
    outbox_max: int = Field(50_000, ge=1, validation_alias="EMM_WORKER_OUTBOX_MAX")
    drain_s: Seconds = Field(10.0, ge=0)


class WriterSettings(_Service, _Amqp, _ReadCron):
    """`emm writer`: where to write and how to batch."""

    influx_url: WebUrl = "http://127.0.0.1:8086"
    influx_api: Annotated[InfluxApi, _LOWER] = "v2"
    influx_token: str = ""
    influx_org: str = ""
    influx_bucket: str = "energy"
    batch_size: int = Field(5000, ge=1, le=65535, validation_alias="EMM_WRITER_BATCH_SIZE")
    # Below InfluxDB 1.x's default body limit (max-body-size, 25 MB); a 413 splits anyway.
    batch_bytes: int = Field(
        8_000_000, ge=100_000, le=1_000_000_000, validation_alias="EMM_WRITER_BATCH_BYTES"
    )
    flush_interval_ms: int = Field(200, ge=1, validation_alias="EMM_WRITER_FLUSH_INTERVAL_MS")
    write_timeout_s: Seconds = Field(10.0, ge=0.1, validation_alias="EMM_INFLUX_TIMEOUT_S")
    retry_max_s: Seconds = Field(30.0, ge=0.1, validation_alias="EMM_WRITER_RETRY_MAX_S")
    # Ticks a reading may carry, around the writer's clock: longer ago than any outage the
    # system rides out, or ahead by more than clock skew, and it was not made for a tick of now.
    max_age_s: Seconds = Field(7 * 86400.0, ge=60, validation_alias="EMM_WRITER_MAX_AGE_S")
    max_future_s: Seconds = Field(600.0, ge=0, validation_alias="EMM_WRITER_MAX_FUTURE_S")
    # Benchmarks: append "written_ms tick_ms count" per tick per batch.
    stats_file: str = Field("", validation_alias="EMM_WRITER_STATS_FILE")


class StatusSettings(_Amqp, _ReadCron):
    """`emm status` (besides the writer's `EMM_INFLUX_*`): RabbitMQ's management API, by
    default derived from `EMM_AMQP_URL` (its host, port 15672, its user and password)."""

    rabbitmq_api_url: WebUrlOrNone = ""


class SimulatorSettings(_Service):
    """`emm simulator`: where to listen."""

    # loopback unless asked: virtual meters are for this machine (compose binds 0.0.0.0)
    host: str = Field("127.0.0.1", validation_alias="EMM_SIMULATOR_HOST")
    port: int = Field(5020, ge=0, le=65535, validation_alias="EMM_SIMULATOR_PORT")
    step_s: Seconds = Field(1.0, ge=0.001, validation_alias="EMM_SIMULATOR_STEP_S")


class CheckSettings(_Postgres, _ReadCron):
    """`emm check`: the database to judge, and the period meters without a cron are read at."""


class MigrateSettings(_Postgres):
    """`emm migrate`, and the commands that load configuration: the database, the seeded meter."""

    # where `emm simulator` listens by default; compose points these at its simulator container
    seed_host: str = "127.0.0.1"
    seed_port: int = Field(5020, ge=1, le=65535)


def _explain(cls: type[_Settings], error: ErrorDetails, env: Mapping[str, str]) -> str:
    """One bad value as `EMM_NAME='value': what is allowed`."""
    if error["type"] == "emm_config":
        return error["msg"]
    # The environment source keys a field by its alias if it has one, else by its name.
    loc = error["loc"][0]
    field = next(name for name, f in cls.model_fields.items() if loc in (name, f.validation_alias))
    variable = cls.variable(field)
    if env.get(variable + FILE_SUFFIX, "").strip():
        # the value is a secret: name its file, never show it
        variable += FILE_SUFFIX
        given = env[variable]
    else:
        given = env.get(variable, error["input"])
    if error["type"] == "value_error":  # our own checks (URLs, DSN) say what they allow
        allowed = str(error.get("ctx", {}).get("error", error["msg"]))
    else:
        allowed = _allowed(cls.model_fields[field])
    return f"{variable}={given!r}: {allowed}"


def _allowed(field: FieldInfo) -> str:
    """What a field accepts, from its type and bounds."""
    if get_origin(field.annotation) is Literal:
        return "must be one of " + ", ".join(map(str, get_args(field.annotation)))
    low = next((m.ge for m in field.metadata if isinstance(m, annotated_types.Ge)), None)
    high = next((m.le for m in field.metadata if isinstance(m, annotated_types.Le)), None)
    kind = "a whole number" if field.annotation is int else "a finite number"
    if low is not None and high is not None:
        return f"must be {kind} from {low} to {high}"
    if low is not None:
        return f"must be {kind} at least {low}"
    return f"must be {kind}"
