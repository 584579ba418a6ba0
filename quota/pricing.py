"""Cost arithmetic: pure functions from (price version, usage) to Decimal USD or None (unpriced)."""

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal

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


def token_cost(price, usage: Usage) -> Decimal:
    cached = min(usage.cached_tokens, usage.input_tokens)
    audio_in = min(usage.audio_input_tokens, usage.input_tokens - cached)
    text_in = usage.input_tokens - cached - audio_in
    audio_out = min(usage.audio_output_tokens, usage.output_tokens)
    text_out = usage.output_tokens - audio_out
    return (
        _per_1m(text_in, price.input_per_1m, None)
        + _per_1m(cached, price.cached_input_per_1m, price.input_per_1m)
        + _per_1m(audio_in, price.audio_input_per_1m, price.input_per_1m)
        + _per_1m(text_out, price.output_per_1m, None)
        + _per_1m(audio_out, price.audio_output_per_1m, price.output_per_1m)
    )


def cost_for(price, usage: Usage) -> Decimal | None:
    """USD cost rounded half-up to 1e-9, or None when unpriced (no price, or a unit that does not fit)."""
    if price is None:
        return None
    if price.unit:
        factor = UNIT_CONVERSIONS.get((usage.unit, price.unit))
        if factor is None or usage.quantity is None or price.price_per_unit is None:
            return None
        return round_usd(usage.quantity * factor * price.price_per_unit)
    has_token_rates = price.input_per_1m is not None or price.output_per_1m is not None
    if not has_token_rates or (usage.unit and not usage.has_tokens):
        return None
    return round_usd(token_cost(price, usage))
