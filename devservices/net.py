"""Ports and waiting: a free port (or a run of them), whether a port answers, polling, and a
port that is closed until it forwards to a server (an outage a test ends when it wants)."""

from __future__ import annotations

import random
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_run(count: int) -> int:
    """A first port of `count` consecutive free ports, below Linux's ephemeral range (32768+)
    so no outgoing connection takes one of them meanwhile."""
    rng = random.Random()
    for _ in range(100):
        base = rng.randrange(20000, 32700 - count)
        taken = False
        for port in range(base, base + count):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    taken = True
                    break
        if not taken:
            return base
    raise RuntimeError(f"no run of {count} free ports")


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def wait_for(predicate: Callable[[], T], timeout_s: float, interval_s: float = 0.2) -> T:
    """Poll `predicate` until it returns something truthy, and return that; raise
    TimeoutError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout_s} s")
        time.sleep(interval_s)


def wait_http(
    url: str, timeout_s: float = 30.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until `url` answers with any HTTP status below 500 (fail early if `proc` exits)."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status < 500:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return
            last = exc
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s: {last}")


class Forwarder:
    """A TCP port on 127.0.0.1 that is closed until `open` forwards it to `target`; `close`
    closes it and every connection through it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._server: socket.socket | None = None
        self._sockets: list[socket.socket] = []

    def open(self) -> None:
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        assert self._server is not None
        while True:
            try:
                client, _ = self._server.accept()
                upstream = socket.create_connection(self.target)
            except OSError:
                return
            self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        try:
            sink.shutdown(socket.SHUT_WR)  # the other way may still be talking
        except OSError:
            pass

    def close(self) -> None:
        for s in [*self._sockets, *([self._server] if self._server else [])]:
            try:
                s.close()
            except OSError:
                pass
