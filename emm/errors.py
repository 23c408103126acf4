"""The project's exceptions.

Third-party errors (pika/aiormq, pymodbus, psycopg2, influxdb-client, urllib3) are converted into
these where they enter, so nothing above that layer needs to know the libraries' types.

    EmmError
    ├── ConfigError              a bad setting, register row, profile or meter; skip it and go on
    │   └── Misconfigured            what cannot fix itself: a bad setting, or a service refusing
    │                                us as configured (login, vhost, database, bucket, schema,
    │                                API version); the command stops with exit status 78
    ├── MessageError             a message body that cannot be decoded (carries the raw bytes)
    ├── DecodeError              registers that cannot be turned into a value (wrong length, ...)
    ├── DeviceError              a Modbus device did not give us the data
    │   ├── TransientDeviceError     refused or reset connection: retry
    │   │   ├── NoAnswer                 the unit did not answer: a timeout, or its gateway's
    │   │   │                            exception 10 or 11 (path unavailable, no response)
    │   │   └── BusyAnswer               exception 5 or 6: the device answered "later"
    │   └── PermanentDeviceError     a Modbus exception answer that a retry will not change
    ├── BrokerError              RabbitMQ unreachable or the channel closed: reconnect
    ├── DatabaseError            PostgreSQL unreachable or a statement failed
    └── SinkError                InfluxDB did not take a write
        ├── SinkUnavailable          unreachable, 5xx, timeout: keep the messages, retry later
        └── SinkRejected             400, 413, 422: the data (or its size) is bad: split the
                                     batch, dead-letter a single reading
"""

from __future__ import annotations


class EmmError(Exception):
    """Root of every error the project raises on purpose."""


class ConfigError(EmmError):
    """A setting, register row, profile or meter that cannot be used as given."""


class Misconfigured(ConfigError):
    """A setting that cannot work, or a service that answered but refuses us as configured
    (a refused login, a missing vhost, database, bucket or schema, the other InfluxDB API).
    Unlike an outage, waiting will not mend it: it is reported once and the command stops."""


class MessageError(EmmError):
    """A queue message whose body is not a valid job or reading."""

    def __init__(self, reason: str, raw: bytes) -> None:
        super().__init__(reason)
        self.reason = reason
        self.raw = raw


class DecodeError(EmmError):
    """Register words that do not decode to a value of the register's type."""


class DeviceError(EmmError):
    """A device read that failed; `code` is a short machine-readable reason for `meter_status`.

    `answered` says whether the device itself answered (with a Modbus exception): such a device
    is up, whatever the answer said.
    """

    code = "device_error"
    answered = False

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class TransientDeviceError(DeviceError):
    """A failure that may pass: timeout, connection refused or reset, device busy."""

    code = "unreachable"


class NoAnswer(TransientDeviceError):
    """The unit did not answer: no reply in time, or its gateway said so (exception 10 or 11,
    `exception_code`; 0 for a timeout)."""

    code = "timeout"

    def __init__(self, message: str, *, exception_code: int = 0) -> None:
        super().__init__(
            message, code=f"modbus_exception_{exception_code}" if exception_code else None
        )
        self.exception_code = exception_code


class BusyAnswer(TransientDeviceError):
    """The device answered that it cannot serve the request now (exception 5 or 6)."""

    answered = True

    def __init__(self, message: str, *, exception_code: int) -> None:
        super().__init__(message, code=f"modbus_exception_{exception_code}")
        self.exception_code = exception_code


class PermanentDeviceError(DeviceError):
    """A Modbus exception answer that retrying within the tick will not change."""

    answered = True

    def __init__(self, message: str, *, exception_code: int) -> None:
        super().__init__(message, code=f"modbus_exception_{exception_code}")
        self.exception_code = exception_code


class BrokerError(EmmError):
    """RabbitMQ could not be reached or closed the channel."""


class DatabaseError(EmmError):
    """PostgreSQL could not be reached or refused a statement."""


class SinkError(EmmError):
    """InfluxDB did not take a write."""


class SinkUnavailable(SinkError):
    """InfluxDB could not be reached or answered with a server error: retry later."""


class SinkRejected(SinkError):
    """InfluxDB refused the data itself (HTTP 400, 413 too large, 422): the same write will
    never succeed."""
