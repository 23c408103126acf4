"""RabbitMQ: a private vhost on a broker the caller names, or a private node of one's own to
kill and restart (an outage)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

from devservices.net import free_port, port_open, wait_for

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672"
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"


class VhostUnavailable(RuntimeError):
    """A private vhost cannot be made here (no rabbitmqctl, or it failed)."""


def _rabbitmqctl(*args: str) -> subprocess.CompletedProcess[str]:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        raise VhostUnavailable("rabbitmqctl not found")
    return subprocess.run([ctl, *args], capture_output=True, text=True, timeout=120)


@contextlib.contextmanager
def private_vhost(amqp_base: str = DEFAULT_URL, prefix: str = "emm-test") -> Iterator[str]:
    """A fresh vhost on the local broker that `amqp_base`'s user (no vhost in it) may use
    fully; yields the URL with the vhost, and deletes the vhost afterwards.

    Made with rabbitmqctl, which needs root (the Erlang cookie)."""
    user = urllib.parse.urlsplit(amqp_base).username or "guest"
    vhost = f"{prefix}-{uuid.uuid4().hex[:10]}"
    made = _rabbitmqctl("add_vhost", vhost)
    if made.returncode != 0:
        raise VhostUnavailable(f"rabbitmqctl add_vhost failed: {made.stderr.strip()}")
    try:
        perms = _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        if perms.returncode != 0:
            raise VhostUnavailable(f"rabbitmqctl set_permissions failed: {perms.stderr.strip()}")
        yield f"{amqp_base.rstrip('/')}/{urllib.parse.quote(vhost, safe='')}"
    finally:
        _rabbitmqctl("delete_vhost", vhost)


@contextlib.contextmanager
def service_users(
    amqp_base: str = DEFAULT_URL, prefix: str = "emm-test"
) -> Iterator[dict[str, str]]:
    """A fresh vhost holding the topology and one user per service with only its rights, made
    from `broker.access.definitions` as a deployment makes them; yields service -> AMQP URL
    (and "admin" -> `amqp_base`'s user, who may do everything there), and deletes the vhost and
    the users afterwards. Needs rabbitmqctl as root, like `private_vhost`."""
    import json
    import secrets
    import tempfile

    from broker.access import PERMISSIONS, definitions

    host = urllib.parse.urlsplit(amqp_base)
    admin = host.username or "guest"
    tag = uuid.uuid4().hex[:10]
    vhost = f"{prefix}-{tag}"
    users = {
        service: (f"{prefix}-{tag}-{service}", secrets.token_hex(16)) for service in PERMISSIONS
    }
    document = definitions(vhost, users)
    # the caller's own user may do everything there (one rabbitmqctl call less: each is slow)
    document["permissions"].append(
        {"user": admin, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}
    )
    with tempfile.NamedTemporaryFile("w", suffix=".json") as file:
        json.dump(document, file)
        file.flush()
        os.chmod(file.name, 0o644)  # read by the broker's own user
        made = _rabbitmqctl("import_definitions", file.name)
    if made.returncode != 0:
        raise VhostUnavailable(f"rabbitmqctl import_definitions failed: {made.stderr.strip()}")
    quoted = urllib.parse.quote(vhost, safe="")
    netloc = f"{host.hostname}:{host.port or 5672}"
    try:
        urls = {
            service: f"amqp://{name}:{password}@{netloc}/{quoted}"
            for service, (name, password) in users.items()
        }
        yield {**urls, "admin": f"{amqp_base.rstrip('/')}/{quoted}"}
    finally:
        ctl = shutil.which("rabbitmqctl") or "rabbitmqctl"
        deletions = [["delete_vhost", vhost]] + [["delete_user", n] for n, _ in users.values()]
        running = [
            subprocess.Popen([ctl, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for args in deletions
        ]
        for proc in running:  # at once: each call starts an Erlang VM, seconds apiece
            proc.wait(timeout=120)


def delete_queues(amqp_url: str, queues: tuple[str, ...]) -> None:
    """Delete these queues (with their messages) if they exist."""
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = conn.channel()
        for queue in queues:
            channel.queue_delete(queue)
    finally:
        conn.close()


class PrivateRabbitMQ:
    """A RabbitMQ node of one's own (own name, ports and data folder), to kill and restart."""

    def __init__(self, folder: Path, *, management: bool = False) -> None:
        self.folder = folder
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"emmfault{self.port}@localhost"
        self.proc: subprocess.Popen[bytes] | None = None
        # the management plugin's HTTP API on a port of its own (None: not enabled)
        self.management_port = free_port() if management else None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        # A short heartbeat so a dead peer is noticed quickly.
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F?heartbeat=10"

    @staticmethod
    def available() -> str | None:
        """Why a private node cannot be started here, or None."""
        if not Path(RABBITMQ_SERVER).exists():
            return "rabbitmq-server is not installed"
        if os.geteuid() != 0:
            return "a private RabbitMQ node needs root (its Erlang cookie)"
        return None

    def start(self, timeout_s: float = 60) -> None:
        """Start the node; returns once its AMQP port accepts connections."""
        env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.folder / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.folder / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.folder / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.folder / "advanced.config"),
            "RABBITMQ_PID_FILE": str(self.folder / "pid"),
        }
        if self.management_port is not None:
            (self.folder / "enabled_plugins").write_text("[rabbitmq_management].\n")
            (self.folder / "rabbitmq.conf").write_text(
                f"management.tcp.port = {self.management_port}\nmanagement.tcp.ip = 127.0.0.1\n"
            )
        with (self.folder / "server.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [RABBITMQ_SERVER],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(lambda: port_open("127.0.0.1", self.port), timeout_s, 0.2)
        if self.management_port is not None:
            port = self.management_port
            wait_for(lambda: port_open("127.0.0.1", port), timeout_s, 0.2)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the node dies without closing anything."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        wait_for(lambda: not port_open("127.0.0.1", self.port), 30)

    def stop(self) -> None:
        """A clean shutdown (SIGTERM): connections are closed by the broker."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def queue_counts(self, queue: str) -> tuple[int, int]:
        """(ready, unacknowledged) messages of `queue`, as rabbitmqctl reports them."""
        ctl = Path(RABBITMQ_SERVER).with_name("rabbitmqctl")
        out = subprocess.run(
            [
                str(ctl),
                "-n",
                self.node,
                "-q",
                "list_queues",
                "name",
                "messages_ready",
                "messages_unacknowledged",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        for line in out.splitlines():
            parts = line.split()
            if parts and parts[0] == queue:
                return int(parts[1]), int(parts[2])
        raise LookupError(f"queue {queue} not listed: {out!r}")

    def queue_depth(self, queue: str) -> int:
        """Ready messages in `queue`."""
        import pika

        conn = pika.BlockingConnection(pika.URLParameters(self.url))
        try:
            return int(conn.channel().queue_declare(queue, passive=True).method.message_count)
        finally:
            conn.close()
