from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quota.models import PriceVersion
from quota.pricing import Usage, billed_tier, cost_for


def token_price(**rates):
    return PriceVersion(**{k: Decimal(v) for k, v in rates.items()})


def unit_price(unit, amount):
    return PriceVersion(unit=unit, price_per_unit=Decimal(amount))


def test_it_bills_cached_tokens_at_the_cached_price_and_never_twice():
    price = token_price(input_per_1m="2", cached_input_per_1m="0.5", output_per_1m="8")
    usage = Usage(input_tokens=1000, cached_tokens=400, output_tokens=100, reasoning_tokens=60)
    # 600 * 2 + 400 * 0.5 + 100 * 8 = 1200 + 200 + 800 per 1M
    assert cost_for(price, usage) == Decimal("0.002200000")


def test_it_bills_transcription_seconds_pro_rata_on_a_per_minute_price():
    assert cost_for(unit_price("minute", "0.006"), Usage(quantity=Decimal(90), unit="second")) == Decimal("0.009")


def test_it_returns_unpriced_when_the_unit_does_not_fit_the_meter():
    assert cost_for(unit_price("minute", "0.006"), Usage(input_tokens=10, output_tokens=5)) is None
    assert cost_for(token_price(input_per_1m="1"), Usage(quantity=Decimal(3), unit="page")) is None
    assert cost_for(None, Usage(input_tokens=10)) is None


def test_it_rounds_half_up_to_a_nano_dollar():
    price = token_price(input_per_1m="0.0015", output_per_1m="0")
    assert cost_for(price, Usage(input_tokens=1)) == Decimal("0.000000002")  # 1.5e-9 -> 2e-9


@given(
    inp=st.integers(0, 10**9),
    cached_share=st.integers(0, 100),
    out=st.integers(0, 10**9),
    rate_in=st.decimals("0", "1000", places=4),
    rate_cached=st.decimals("0", "1000", places=4),
    rate_out=st.decimals("0", "1000", places=4),
)
def test_cost_is_exact_decimal_and_splits_cached_from_input(inp, cached_share, out, rate_in, rate_cached, rate_out):
    cached = inp * cached_share // 100
    price = token_price(input_per_1m=rate_in, cached_input_per_1m=rate_cached, output_per_1m=rate_out)
    cost = cost_for(price, Usage(input_tokens=inp, cached_tokens=cached, output_tokens=out))
    expected = ((inp - cached) * rate_in + cached * rate_cached + out * rate_out) / Decimal(10**6)
    assert abs(cost - expected) <= Decimal("0.0000000005")
    assert cost.as_tuple().exponent == -9


def optioned_price():
    price = token_price(input_per_1m="1", output_per_1m="2")
    price.service_tier_multipliers = {"priority": "2", "flex": "0.5"}
    price.tool_call_prices = {"web_search": "0.01"}
    return price


TOKENS = {"input_tokens": 1000, "output_tokens": 500}  # $0.002 at 1x


@pytest.mark.parametrize(
    ("reported", "requested", "tier", "cost"),
    [
        ("", "", "", "0.002"),  # none reported nor asked
        ("default", "", "default", "0.002"),
        ("auto", "", "auto", "0.002"),
        ("priority", "", "priority", "0.004"),  # the answer's tier, priced: billed even when not asked
        ("default", "priority", "default", "0.002"),  # served at default: billed at default
        ("flex", "priority", "flex", "0.001"),
        ("scale", "priority", "priority", "0.004"),  # a tier the price does not multiply: the one asked
        ("", "flex", "flex", "0.001"),  # an upstream that reports no tier: the one asked
        ("scale", "", "scale", "0.002"),  # neither priced nor asked: 1x
    ],
)
def test_the_billed_tier_is_the_reported_one_when_priced_else_the_requested_one(reported, requested, tier, cost):
    usage = Usage(**TOKENS, service_tier=reported, requested_tier=requested)
    assert billed_tier(optioned_price(), usage) == tier
    assert cost_for(optioned_price(), usage) == Decimal(cost)


def test_tool_calls_are_added_per_call_and_not_multiplied_by_the_tier():
    usage = Usage(**TOKENS, service_tier="priority", tool_calls=(("web_search", 3), ("file_search", 1)))
    # 0.002 × 2 + 3 × 0.01 (file_search has no price here: the proxy refuses declaring it)
    assert cost_for(optioned_price(), usage) == Decimal("0.034")


def _per_kind_reference(price, usage):
    """The token cost as the five kinds' sum, each priced even when it has no tokens."""
    cached = min(usage.cached_tokens, usage.input_tokens)
    audio_in = min(usage.audio_input_tokens, usage.input_tokens - cached)
    audio_out = min(usage.audio_output_tokens, usage.output_tokens)
    kinds = (
        (usage.input_tokens - cached - audio_in, price.input_per_1m, None),
        (cached, price.cached_input_per_1m, price.input_per_1m),
        (audio_in, price.audio_input_per_1m, price.input_per_1m),
        (usage.output_tokens - audio_out, price.output_per_1m, None),
        (audio_out, price.audio_output_per_1m, price.output_per_1m),
    )
    priced = (Decimal(n) * ((rate if rate is not None else fallback) or 0) / 1_000_000 for n, rate, fallback in kinds)
    return sum(priced, Decimal(0))


RATE = st.one_of(st.none(), st.decimals(min_value=0, max_value=10_000, places=9, allow_nan=False))


@given(
    tokens=st.lists(st.integers(min_value=0, max_value=10**9), min_size=6, max_size=6),
    rates=st.lists(RATE, min_size=5, max_size=5),
)
def test_kinds_without_tokens_add_nothing_and_every_other_kind_its_rate(tokens, rates):
    """Skipping a kind with no tokens gives the cost that pricing all five gives, audio and cached
    kinds at their own rate or else the input's and output's."""
    from quota.pricing import token_cost

    names = ("input_per_1m", "cached_input_per_1m", "audio_input_per_1m", "output_per_1m", "audio_output_per_1m")
    price = PriceVersion(**dict(zip(names, rates, strict=True)))
    usage = Usage(
        input_tokens=tokens[0], cached_tokens=tokens[1], audio_input_tokens=tokens[2],
        output_tokens=tokens[3], audio_output_tokens=tokens[4], reasoning_tokens=tokens[5],
    )  # fmt: skip
    assert token_cost(price, usage) == _per_kind_reference(price, usage)
    if price.input_per_1m is not None or price.output_per_1m is not None:
        assert cost_for(price, usage) == _per_kind_reference(price, usage).quantize(Decimal("1e-9"), "ROUND_HALF_UP")
