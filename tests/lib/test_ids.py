"""Request ids are UUIDv7 (RFC 9562): version and variant bits, the time they carry, strictly
increasing within a process (same millisecond, a clock stepping back, a full counter), unique across
threads, and the ids the gateway makes for requests without an X-Request-Id are of this kind."""

import threading
import time
import uuid

from lib import ids
from lib.http import request_id_from
from lib.ids import uuid7, uuid7_time_ms


def test_layout_version_variant_and_time(monkeypatch):
    monkeypatch.setattr(ids, "_last", (0, 0))  # ids made earlier in this process may have borrowed a millisecond
    before = time.time_ns() // 1_000_000
    made = uuid7()
    after = time.time_ns() // 1_000_000
    assert made.version == 7 and made.variant == uuid.RFC_4122
    assert before <= uuid7_time_ms(made) <= after


def test_ids_of_one_millisecond_increase_and_a_full_counter_borrows_the_next(monkeypatch):
    monkeypatch.setattr(ids, "_last", (0, 0))
    made = [uuid7(now_ms=1_700_000_000_000) for _ in range(5000)]  # more than 4096: the counter runs out
    assert made == sorted(made) and len(set(made)) == 5000
    assert {uuid7_time_ms(u) for u in made} == {1_700_000_000_000, 1_700_000_000_001}
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in made)


def test_a_clock_stepping_back_still_gives_a_greater_id(monkeypatch):
    monkeypatch.setattr(ids, "_last", (0, 0))
    later = uuid7(now_ms=1_700_000_000_500)
    earlier_clock = uuid7(now_ms=1_700_000_000_100)
    assert earlier_clock > later and uuid7_time_ms(earlier_clock) == 1_700_000_000_500


def test_text_forms_sort_as_the_ids_do():
    made = [uuid7() for _ in range(2000)]
    assert sorted(str(u) for u in made) == [str(u) for u in made]
    assert sorted(u.hex for u in made) == [u.hex for u in made]


def test_threads_never_make_the_same_id():
    found: list[uuid.UUID] = []
    lock = threading.Lock()

    def make():
        mine = [uuid7() for _ in range(3000)]
        with lock:
            found.extend(mine)

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(found)) == 12_000


def test_the_gateway_makes_time_ordered_request_ids_and_keeps_a_callers_valid_one():
    made = uuid.UUID(request_id_from(""))
    assert made.version == 7
    assert request_id_from("caller-id-1") == "caller-id-1"
    assert uuid.UUID(request_id_from("bad id with spaces")).version == 7


def test_the_text_form_is_the_uuids_own_and_keeps_the_order(monkeypatch):
    from lib.ids import uuid7_text

    monkeypatch.setattr(ids, "_last", (0, 0))
    low = uuid.UUID(uuid7_text(now_ms=1))  # leading zero digits are written, not dropped
    assert str(low).startswith("00000000-0001-7") and uuid7_time_ms(low) == 1
    texts = [uuid7_text(now_ms=1_700_000_000_000 + i // 3) for i in range(30)] + [uuid7_text()]
    for text in texts:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and len(text) == 36 and parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert uuid7_time_ms(uuid.UUID(texts[0])) == 1_700_000_000_000
    assert [uuid.UUID(t) for t in texts] == sorted(uuid.UUID(t) for t in texts)  # made in order, ordered


def test_uuid4_is_uuid_uuid4_of_the_same_random_bytes(monkeypatch):
    for raw in (bytes(16), b"\xff" * 16, bytes(range(16)), bytes(range(200, 216))):
        monkeypatch.setattr(ids.os, "urandom", lambda n, raw=raw: raw[:n])
        made, expected = ids.uuid4(), uuid.UUID(bytes=raw, version=4)
        assert type(made) is uuid.UUID
        assert (made.int, made.is_safe, str(made), hash(made)) == (
            expected.int,
            expected.is_safe,
            str(expected),
            hash(expected),
        )
        assert made.version == 4 and made.variant == uuid.RFC_4122
    monkeypatch.undo()
    assert len({ids.uuid4() for _ in range(1000)}) == 1000


def test_a_plans_reservation_id_is_a_version_4_uuid():
    from quota.admission.plan import Plan

    field = Plan.__dataclass_fields__["reservation_id"]
    first, second = field.default_factory(), field.default_factory()
    assert first != second and first.version == second.version == 4 and type(first) is uuid.UUID
