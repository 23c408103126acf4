"""`emm worker` with timers around its stages, for finding where a job's time goes (bench only).

    EMM_BENCH_PROBE_FILE=probe.json python -m bench.workerprobe

Runs the real worker (`worker.__main__.main`) after wrapping, in this process only:
`Consumer.handle` (a job from delivery to ack), `Job.decode`, `read_job` (the device reads, with
the wait for a gateway's link), `Broker.publish` to emm.readings (until RabbitMQ confirmed) and
`Broker.settle` of jobs (the ack). When the worker stops, the count, mean, p50, p99 and total of
each stage in milliseconds go to EMM_BENCH_PROBE_FILE as JSON. `python -m bench.pipeline
--probe-worker` runs its first worker this way. The wrappers cost a few microseconds a call.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections import defaultdict
from typing import Any

_STAGES: dict[str, list[float]] = defaultdict(list)


def _async_timer(name: str, func: Any, only: Any = None) -> Any:
    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await func(*args, **kwargs)
        finally:
            if only is None or only(args, kwargs):
                _STAGES[name].append((time.perf_counter() - started) * 1000)

    return wrapper


def install() -> None:
    """Wrap the stages of the worker in this process."""
    import broker
    import worker.consumer
    from emm import messages

    decode = messages.Job.decode.__func__  # type: ignore[attr-defined]

    def timed_decode(cls: Any, body: bytes) -> Any:
        started = time.perf_counter()
        try:
            return decode(cls, body)
        finally:
            _STAGES["job_decode"].append((time.perf_counter() - started) * 1000)

    messages.Job.decode = classmethod(timed_decode)  # type: ignore[method-assign,assignment]
    worker.consumer.Consumer.handle = _async_timer("job_total", worker.consumer.Consumer.handle)  # type: ignore[method-assign]
    worker.consumer.read_job = _async_timer("read_job", worker.consumer.read_job)
    broker.Broker.publish = _async_timer(  # type: ignore[method-assign]
        "publish_reading_until_confirmed",
        broker.Broker.publish,
        only=lambda args, _kw: len(args) > 1 and args[1] == broker.READINGS,
    )
    broker.Broker.settle = _async_timer("ack_job", broker.Broker.settle)  # type: ignore[method-assign]


def summary() -> dict[str, Any]:
    out = {}
    for name, values in sorted(_STAGES.items()):
        values = sorted(values)
        n = len(values)
        out[name] = {
            "count": n,
            "mean_ms": round(sum(values) / n, 3),
            "p50_ms": round(values[n // 2], 3),
            "p99_ms": round(values[min(n - 1, int(n * 0.99))], 3),
            "total_s": round(sum(values) / 1000, 3),
        }
    return out


def main() -> None:
    install()
    from worker.__main__ import main as worker_main

    try:
        worker_main([])
    finally:
        path = os.environ.get("EMM_BENCH_PROBE_FILE")
        if path:
            with open(path, "w", encoding="utf-8") as f:
                json.dump(summary(), f)


if __name__ == "__main__":
    main()
