"""The pure rebalance function (SPEC section 8, adaptive token pool)."""

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quota.pool import RebalanceRefused, rebalance


def ids(n):
    """n UUIDs in ascending order (so the last one is the greatest id)."""
    return sorted((uuid.uuid4() for _ in range(n)), key=lambda u: u.int)


def quotas(shares):
    return {s.allocation_id: s.quota for s in shares}


def test_the_contract_example_gives_450_310_240():
    a, b, c = ids(3)
    shares = rebalance(total=1000, floor=100, reserved=0, pool=[(a, 5), (b, 3), (c, 2)])
    assert quotas(shares) == {a: 450, b: 310, c: 240}


def test_reserved_tokens_are_taken_off_before_sharing():
    a, b, c = ids(3)
    shares = rebalance(total=1500, floor=100, reserved=500, pool=[(a, 5), (b, 3), (c, 2)])
    assert quotas(shares) == {a: 450, b: 310, c: 240}


def test_cold_start_splits_evenly_and_gives_the_remainder_to_the_greatest_id():
    a, b, c = ids(3)
    shares = rebalance(total=1001, floor=100, reserved=0, pool=[(c, 0), (a, 0), (b, 0)])
    assert quotas(shares) == {a: 333, b: 333, c: 335}
    assert "remainder" in {s.allocation_id: s.reason for s in shares}[c]


def test_the_greatest_id_is_the_greatest_uuid_as_a_number():
    low = uuid.UUID("00000000-0000-0000-0000-00000000000f")
    high = uuid.UUID("f0000000-0000-0000-0000-000000000000")
    shares = rebalance(total=5, floor=0, reserved=0, pool=[(high, 0), (low, 0)])
    assert quotas(shares) == {low: 2, high: 3}


def test_the_rounding_leftover_goes_to_the_highest_user():
    a, b, c = ids(3)
    shares = rebalance(total=100, floor=0, reserved=0, pool=[(a, 1), (b, 7), (c, 1)])
    # 100*1//9 = 11, 100*7//9 = 77, leftover 1 → b (highest user)
    assert quotas(shares) == {a: 11, b: 78, c: 11}


def test_a_tie_for_highest_user_goes_to_the_greatest_id():
    a, b, c = ids(3)
    shares = rebalance(total=100, floor=0, reserved=0, pool=[(a, 1), (b, 1), (c, 1)])
    assert quotas(shares) == {a: 33, b: 33, c: 34}


def test_an_allocation_without_usage_still_gets_the_floor():
    a, b = ids(2)
    shares = rebalance(total=1000, floor=100, reserved=0, pool=[(a, 0), (b, 42)])
    assert quotas(shares) == {a: 100, b: 900}


def test_bigint_values_above_two_to_the_31_are_exact():
    a, b, c = ids(3)
    total = 3 * 2**40 + 7
    usage = [(a, 2**35 + 1), (b, 2**33), (c, 3)]
    shares = rebalance(total=total, floor=2**32, reserved=2**31 + 5, pool=usage)
    assert sum(s.quota for s in shares) + 2**31 + 5 == total
    assert min(s.quota for s in shares) >= 2**32
    bonus = total - (2**31 + 5) - 3 * 2**32
    assert quotas(shares)[c] == 2**32 + bonus * 3 // (2**35 + 2**33 + 4)


def test_near_the_bigint_limit_nothing_overflows():
    a, b = ids(2)
    total = 2**63 - 1
    shares = rebalance(total=total, floor=2**61, reserved=0, pool=[(a, 2**62), (b, 1)])
    assert sum(s.quota for s in shares) == total


@pytest.mark.parametrize(
    ("total", "floor", "reserved", "n", "message"),
    [
        (0, 100, 0, 3, "off"),
        (1000, 100, 0, 0, "no allocation"),
        (1000, 100, 701, 3, "distributable 299"),
        (1000, 0, 1001, 3, "distributable -1"),
    ],
)
def test_it_refuses_when_off_empty_or_exhausted(total, floor, reserved, n, message):
    with pytest.raises(RebalanceRefused, match=message):
        rebalance(total=total, floor=floor, reserved=reserved, pool=[(u, 1) for u in ids(n)])


def test_exactly_floor_times_n_is_enough():
    a, b, c = ids(3)
    shares = rebalance(total=1000, floor=100, reserved=700, pool=[(a, 5), (b, 3), (c, 2)])
    assert quotas(shares) == {a: 100, b: 100, c: 100}


pools = st.lists(st.tuples(st.uuids(), st.integers(0, 2**40)), min_size=1, max_size=40, unique_by=lambda p: p[0])


@settings(deadline=None)  # no timing in tests: a busy CI box must not fail them
@given(pool=pools, floor=st.integers(0, 2**40), reserved=st.integers(0, 2**50), extra=st.integers(0, 2**55))
def test_property_quotas_plus_reserved_always_sum_to_t_and_none_is_below_the_floor(pool, floor, reserved, extra):
    total = reserved + floor * len(pool) + extra
    if total == 0:
        return
    shares = rebalance(total=total, floor=floor, reserved=reserved, pool=pool)
    assert sum(s.quota for s in shares) + reserved == total
    assert all(s.quota >= floor for s in shares)
    assert {s.allocation_id for s in shares} == {a for a, _ in pool}


@settings(deadline=None)  # no timing in tests: a busy CI box must not fail them
@given(pool=pools, floor=st.integers(1, 2**30), reserved=st.integers(0, 2**40), short=st.integers(1, 2**30))
def test_property_it_refuses_whenever_the_floors_do_not_fit(pool, floor, reserved, short):
    total = reserved + floor * len(pool) - short
    if total <= 0:
        return
    with pytest.raises(RebalanceRefused):
        rebalance(total=total, floor=floor, reserved=reserved, pool=pool)


@settings(deadline=None)  # no timing in tests: a busy CI box must not fail them
@given(pool=pools, extra=st.integers(0, 10**12))
def test_property_more_usage_never_means_a_smaller_quota(pool, extra):
    shares = rebalance(total=10 * len(pool) + extra, floor=10, reserved=0, pool=pool)
    ordered = sorted(shares, key=lambda s: s.usage)
    # Leftover may lift one allocation; every other pair is ordered like the usage.
    top = max(pool, key=lambda p: (p[1], p[0].int))[0]
    rest = [s for s in ordered if s.allocation_id != top]
    assert all(x.quota <= y.quota for x, y in zip(rest, rest[1:], strict=False) if x.usage < y.usage)
