"""Queue depths over a run: ready messages in the job and reading queues, sampled in a thread.

The jobs are the sum over their shard queues (`emm.jobs.<k>`)."""

from __future__ import annotations

import contextlib
import threading
import time

from broker.topology import JOB_QUEUES, READINGS


class DepthSampler:
    """Ready messages in the job queues and emm.readings, every `interval_s`, in a thread."""

    def __init__(self, amqp_url: str, interval_s: float = 0.5) -> None:
        self.amqp_url = amqp_url
        self.interval_s = interval_s
        self.samples: list[tuple[float, int, int]] = []  # (epoch s, jobs, readings)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="depths", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        import pika

        conn = None
        while not self._stop.is_set():
            try:
                if conn is None or conn.is_closed:
                    conn = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
                    channel = conn.channel()
                jobs = sum(
                    int(channel.queue_declare(q, passive=True).method.message_count)
                    for q in JOB_QUEUES
                )
                readings = channel.queue_declare(READINGS, passive=True).method.message_count
                self.samples.append((time.time(), jobs, int(readings)))
                conn.sleep(self.interval_s)
            except Exception:  # the queues may not exist yet, or the broker blinked
                with contextlib.suppress(Exception):
                    if conn is not None and conn.is_open:
                        conn.close()
                conn = None
                self._stop.wait(self.interval_s)
        with contextlib.suppress(Exception):
            if conn is not None and conn.is_open:
                conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def at(self, epoch_s: float) -> tuple[int, int] | None:
        """The last sample taken at or before `epoch_s`."""
        best = None
        for t, jobs, readings in self.samples:
            if t <= epoch_s:
                best = (jobs, readings)
        return best
