"""Time-ordered ids (UUIDv7, RFC 9562) for request ids: the call records' request-id index is
appended to at its right edge instead of written at random pages, so the pages a busy hour touches
stay in memory however large the table grows.

Layout: 48 bits of Unix time in milliseconds, version 7, 12 bits of sequence (rand_a), variant 10,
62 random bits. Within one process ids are strictly increasing (RFC 9562 section 6.2, method 1: a
counter in rand_a, started at a random value below 2048 each new millisecond; a counter that runs
out borrows the next millisecond). Across processes they are ordered to the millisecond.
Python 3.14's uuid.uuid7 is the same layout; this module exists because the gateway runs on 3.11.
"""

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last = (0, 0)  # (milliseconds, sequence) of the last id made in this process
_SEQ_MAX = 0xFFF


def uuid7(now_ms: int | None = None) -> uuid.UUID:
    """A new UUIDv7; `now_ms` (Unix milliseconds) is for tests."""
    return uuid.UUID(int=_uuid7_int(now_ms))


def uuid4() -> uuid.UUID:
    """uuid.uuid4(): a random UUID, version 4, variant 10, from 16 bytes of os.urandom, made
    without UUID.__init__'s Python checks of its several forms of argument (the same int and
    is_safe, which is all a UUID holds)."""
    value = int.from_bytes(os.urandom(16), "big") & _V4_CLEAR | _V4_SET
    made = _new_uuid(uuid.UUID)
    _set(made, "int", value)
    _set(made, "is_safe", uuid.SafeUUID.unknown)
    return made


# The version and variant bits, as UUID(bytes=..., version=4) sets them.
_V4_CLEAR = ~(0xC000 << 48 | 0xF000 << 64) & ((1 << 128) - 1)
_V4_SET = 0x8000 << 48 | 4 << 76
_new_uuid, _set = object.__new__, object.__setattr__


def uuid7_text(now_ms: int | None = None) -> str:
    """str(uuid7()) without the UUID object: the canonical lower-case text (8-4-4-4-12 hex digits)."""
    digits = f"{_uuid7_int(now_ms):032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def _uuid7_int(now_ms: int | None) -> int:
    global _last
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    random = os.urandom(10)  # one system call: 8 bytes for the tail, 2 for a new millisecond's counter
    tail = int.from_bytes(random[:8], "big") & ((1 << 62) - 1)
    with _lock:
        last_ms, last_seq = _last
        if ms > last_ms:
            seq = int.from_bytes(random[8:], "big") & 0x7FF
        else:  # the same millisecond, or the clock stepped back: keep counting from the last id
            ms, seq = last_ms, last_seq + 1
            if seq > _SEQ_MAX:
                ms, seq = ms + 1, 0
        _last = (ms, seq)
    return (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | seq << 64 | 0b10 << 62 | tail


def uuid7_time_ms(value: uuid.UUID) -> int:
    """The Unix milliseconds a UUIDv7 was made at."""
    return value.int >> 80
