"""Micro-benchmarks of the hot pure code: decoding a response and planning a device.

    python -m bench.codec [--repeat N]

Prints one JSON object: the best-of-N mean time per call, in microseconds, of
- `decode_60_values_us`: RequestDecoder.decode of one 120-word response holding 60 float32 ABCD
  contiguous values, the most one SDM630-style request can hold);
- `plan_100_registers_us`: emm.planner.plan of a 100-register device (uncached);
- `job_encode_us`, `job_decode_us`: a job of an SDM630 (85 registers) to bytes, and back from
  bytes once its type's plan is known (what a worker does for every job after the first);
- `reading_encode_us`, `reading_decode_us`: that meter's reading (85 values) to bytes and back.
Targets: decode <= 20 us, plan <= 200 us.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import timeit

from emm.codec import RequestDecoder, encode
from emm.messages import Job, Meter, Reading, Status
from emm.plan import Plan
from emm.planner import ReadLimits, plan
from emm.profiles import shipped_profile
from emm.registers import DataType, Order, Register

DECODE_TARGET_US = 20.0
PLAN_TARGET_US = 200.0


def sixty_float_registers() -> tuple[Register, ...]:
    """60 contiguous float32 ABCD input registers: one 120-word response.

    The SDM630 map has gaps, so its first 125-register request holds fewer than 60 values; the
    contiguous block is the worst case for one request of that meter's kind.
    """
    return tuple(Register(f"value{i}", 2 * i, 4, DataType.FLOAT32, Order.ABCD) for i in range(60))


def decode_case() -> tuple[RequestDecoder, list[int]]:
    registers = sixty_float_registers()
    start = min(r.address for r in registers)
    count = max(r.end for r in registers) - start
    words = [0] * count
    rnd = random.Random(1)
    for reg in registers:
        at = reg.address - start
        words[at : at + 2] = encode(round(rnd.uniform(-1000, 1000), 3), reg)
    decoder = RequestDecoder.build(start, count, registers)
    values, missing = decoder.decode(words)
    assert len(values) == 60 and not missing
    return decoder, words


def plan_case() -> list[Register]:
    """100 registers of mixed widths with small and large gaps, on two function codes."""
    rnd = random.Random(2)
    registers = []
    address = 0
    widths = {1: DataType.INT16, 2: DataType.FLOAT32, 4: DataType.INT64}
    for i in range(100):
        width = rnd.choice((1, 2, 2, 4))
        address += rnd.choice((0, 0, 0, 1, 3, 20, 70)) if i else 0
        fc = 3 if i < 70 else 4  # a holding-register block and an input-register block
        registers.append(Register(f"r{i}", address, fc, widths[width]))
        address += width
    rnd.shuffle(registers)
    return registers


def message_case() -> tuple[Job, Reading]:
    """A job for an SDM630 and the reading a worker makes of it, every register read."""
    profile = shipped_profile("sdm630")
    assert profile is not None
    registers = profile.registers
    meter = Meter(17, "10.1.2.3", 502, 7, profile.type, "hall B feeder 3")
    tick_ms = 1_800_000_000_000
    job = Job(meter, tick_ms, tick_ms + 10_000, Plan.build(registers, profile.limits))
    rnd = random.Random(3)
    fields = {r.name: round(rnd.uniform(0, 10_000), 3) for r in registers}
    counters = tuple(r.name for r in registers if r.is_counter)
    status = Status(up=True, latency_ms=12.5, requests=4)
    return job, Reading(meter, tick_ms, fields, status, counters=counters)


def best_mean_us(func: object, number: int, repeat: int) -> float:
    timer = timeit.Timer(func)  # type: ignore[arg-type]
    return min(timer.repeat(repeat=repeat, number=number)) / number * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="timing runs; the best is kept")
    args = parser.parse_args(argv)

    decoder, words = decode_case()
    decode_us = best_mean_us(lambda: decoder.decode(words), 20_000, args.repeat)

    registers = plan_case()
    limits = ReadLimits(max_registers=125, max_gap=16)
    plan_us = best_mean_us(lambda: plan(registers, limits), 2_000, args.repeat)

    job, reading = message_case()
    job_body, reading_body = job.encode(), reading.encode()
    assert Job.decode(job_body) == job and Reading.decode(reading_body) == reading
    messages_us = {
        "job_encode_us": best_mean_us(job.encode, 5_000, args.repeat),
        "job_decode_us": best_mean_us(lambda: Job.decode(job_body), 5_000, args.repeat),
        "reading_encode_us": best_mean_us(reading.encode, 5_000, args.repeat),
        "reading_decode_us": best_mean_us(lambda: Reading.decode(reading_body), 5_000, args.repeat),
    }

    print(
        json.dumps(
            {
                "decode_60_values_us": round(decode_us, 2),
                "plan_100_registers_us": round(plan_us, 2),
                **{name: round(us, 2) for name, us in messages_us.items()},
                "decode_target_us": DECODE_TARGET_US,
                "plan_target_us": PLAN_TARGET_US,
                "requests_planned": len(plan(registers, limits)),
                "python": platform.python_version(),
                "machine": platform.machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
