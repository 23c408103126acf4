"""Size limits, each stated once, and the checks that apply them where data enters.

    MAX_REGISTERS_PER_TYPE   2,000   rows of one type: more are refused by the profile import and
                                     skipped by the scheduler's load (with the rows named)
    MAX_JOB_BYTES            1 MiB   a job body; a larger one is dead-lettered before decoding
                                     (a job of 2,000 registers with 95-character names is
                                     about 270 KB)
    MAX_READING_BYTES        4 MiB   a reading body (2,000 values, each with a 200-character
                                     error text: about 830 KB)

Queue limits are the broker's (`broker.topology`), tag lengths the text checks' (`emm.text`).
"""

from __future__ import annotations

from emm.errors import MessageError

MAX_REGISTERS_PER_TYPE = 2000
MAX_JOB_BYTES = 1 << 20
MAX_READING_BYTES = 4 << 20


def check_size(kind: str, body: bytes, limit: int) -> None:
    """Raise MessageError (with the body) when `body` is longer than `limit` bytes: checked
    before decoding, so an oversized message costs no more than its length."""
    if len(body) > limit:
        raise MessageError(f"{kind} is {len(body)} bytes long, at most {limit} are allowed", body)
