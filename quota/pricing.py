"""Cost arithmetic: pure functions from (price version, usage) to Decimal USD or None (unpriced)."""

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING

from lib.frozen import quick_init

if TYPE_CHECKING:
    from .models import PriceVersion

ONE_MILLION = Decimal(1_000_000)
NANO = Decimal("1e-9")
ZERO = Decimal(0)

# Meter units that a unit price may be expressed in, with the factor that converts one metered
# unit into the price's unit (a per-minute price bills metered seconds pro rata).
UNIT_CONVERSIONS = {
    ("image", "image"): Decimal(1),
    ("page", "page"): Decimal(1),
    ("character", "character"): Decimal(1),
    ("query", "query"): Decimal(1),
    ("request", "request"): Decimal(1),
    ("second", "second"): Decimal(1),
    ("second", "minute"): Decimal(1) / Decimal(60),
    ("minute", "minute"): Decimal(1),
}


@quick_init
@dataclass(frozen=True)
class Usage:
    """What one call consumed. Token counts follow OpenAI: cached ⊂ input, audio_input ⊂ input,
    reasoning ⊂ output, audio_output ⊂ output. `quantity`/`unit` carry a non-token meter."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    audio_input_tokens: int = 0
    audio_output_tokens: int = 0
    quantity: Decimal | None = None
    unit: str = ""
    estimated: bool = False
    # Costs beyond tokens (allocations.cost_options): the service tier the answer reported and the
    # one the request asked for ("" when absent), and the built-in tool calls as (tool, count)
    # pairs, sorted by tool.
    service_tier: str = ""
    requested_tier: str = ""
    tool_calls: tuple[tuple[str, int], ...] = ()
    # What was made, as a per-image price table keys it ("1024x1792/hd"): images only, else "".
    variant: str = ""

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def has_tokens(self) -> bool:
        return self.total_tokens > 0


def round_usd(amount: Decimal) -> Decimal:
    return amount.quantize(NANO, rounding=ROUND_HALF_UP)


def ceil_units(quantity: Decimal) -> Decimal:
    return quantity.to_integral_value(rounding=ROUND_CEILING)


def _per_1m(tokens: int, price: Decimal | None, fallback: Decimal | None) -> Decimal:
    rate = price if price is not None else fallback
    if not tokens:
        return ZERO
    return Decimal(tokens) * (rate or ZERO) / ONE_MILLION


def token_cost(price: "PriceVersion", usage: Usage) -> Decimal:
    """Σ tokens × their rate / 1M over the five kinds of token. A kind with no tokens adds nothing
    (it is skipped, not priced at zero: the same value, fewer steps for a call that has two).
    The text input and output terms are `_per_1m`'s written out (every call has them; a call prices
    two or three times)."""
    input_tokens, output_tokens = usage.input_tokens, usage.output_tokens
    cached = min(usage.cached_tokens, input_tokens)
    audio_in = min(usage.audio_input_tokens, input_tokens - cached)
    text_in = input_tokens - cached - audio_in
    audio_out = min(usage.audio_output_tokens, output_tokens)
    text_out = output_tokens - audio_out
    input_rate, output_rate = price.input_per_1m, price.output_per_1m
    total = ZERO
    if text_in:
        total += Decimal(text_in) * (input_rate or ZERO) / ONE_MILLION
    if cached:
        total += _per_1m(cached, price.cached_input_per_1m, input_rate)
    if audio_in:
        total += _per_1m(audio_in, price.audio_input_per_1m, input_rate)
    if text_out:
        total += Decimal(text_out) * (output_rate or ZERO) / ONE_MILLION
    if audio_out:
        total += _per_1m(audio_out, price.audio_output_per_1m, output_rate)
    return total


FREE_TIERS = ("auto", "default")


def billed_tier(price: "PriceVersion | None", usage: Usage) -> str:
    """The service tier a call is billed at. The tier the answer reports, when it is a free tier
    (auto, default) or one the price multiplies; otherwise (absent, or a tier the price has no
    multiplier for) the tier the request asked for. The proxy lets a tier other than auto/default
    through only when the price multiplies it, so a call is never billed below what it asked for
    because its upstream did not say, nor at a multiplier nobody set."""
    reported, requested = usage.service_tier, usage.requested_tier
    multipliers = getattr(price, "service_tier_multipliers", None) or {}
    if reported and (reported in FREE_TIERS or reported in multipliers):
        return reported
    return requested or reported


def tier_multiplier(price: "PriceVersion | None", tier: str) -> Decimal:
    """The token cost's multiplier of a tier: the price's, or 1 (free tiers, none, unpriced)."""
    value = (getattr(price, "service_tier_multipliers", None) or {}).get(tier) if tier not in FREE_TIERS else None
    return Decimal(value) if value is not None else Decimal(1)


def tool_calls_cost(price: "PriceVersion | None", usage: Usage) -> Decimal:
    """Σ calls × the price's per-call price of each tool (a tool the price does not name: 0; the
    proxy refuses a request declaring such a tool, so only an undeclared call can be one)."""
    prices = getattr(price, "tool_call_prices", None) or {}
    return sum(
        (Decimal(count) * Decimal(prices[tool]) for tool, count in usage.tool_calls if tool in prices), start=ZERO
    )


def unit_price(price: "PriceVersion", usage: Usage) -> Decimal | None:
    """The price of one unit: an image's by its size and quality when the price lists that
    variant (`image_prices`), else the price's `price_per_unit`."""
    listed = getattr(price, "image_prices", None)
    if listed and usage.variant in listed:
        return Decimal(listed[usage.variant])
    return price.price_per_unit


def cost_for(price: "PriceVersion | None", usage: Usage) -> Decimal | None:
    """USD cost rounded half-up to 1e-9, or None when unpriced (no price, or a unit that does not
    fit). Token prices: token cost × the billed tier's multiplier + the tool calls' prices."""
    if price is None:
        return None
    if price.unit:
        factor = UNIT_CONVERSIONS.get((usage.unit, price.unit))
        per_unit = unit_price(price, usage)
        if factor is None or usage.quantity is None or per_unit is None:
            return None
        return round_usd(usage.quantity * factor * per_unit)
    has_token_rates = price.input_per_1m is not None or price.output_per_1m is not None
    if not has_token_rates or (usage.unit and not usage.has_tokens):
        return None
    tokens = token_cost(price, usage)
    if usage.service_tier or usage.requested_tier:
        tokens *= tier_multiplier(price, billed_tier(price, usage))
    return round_usd(tokens + tool_calls_cost(price, usage) if usage.tool_calls else tokens)
