"""Images are priced by what was made: a price version's per-image table by size and quality (its
unit price for a variant it does not list), reserved at the requested n × that price; a token price
bills the tokens a gpt-image answer reports instead."""

from decimal import Decimal

import pytest

from allocations.models import ModelKind
from proxy import media_meters
from quota.models import PriceVersion
from quota.pricing import cost_for
from tests.factories import PriceVersionFactory

from .conftest import counter_of, record_of
from .media_fixtures import *  # noqa: F403 - the media and media_upstream fixtures

DALL_E_3 = {
    "1024x1024/standard": "0.04",
    "1024x1024/hd": "0.08",
    "1024x1792/standard": "0.08",
    "1792x1024/standard": "0.08",
    "1024x1792/hd": "0.12",
    "1792x1024/hd": "0.12",
}


def per_image(table=None):
    table = DALL_E_3 if table is None else table
    return PriceVersionFactory.build(
        unit="image", price_per_unit=Decimal("0.04"), image_prices=table, input_per_1m=None, output_per_1m=None
    )


@pytest.fixture
def dall_e_3(media):
    allocation = media.allocation("dall-e-3", ModelKind.IMAGE, unit="image", per_unit="0.04")
    PriceVersion.objects.filter(model=allocation.model).update(image_prices=DALL_E_3)
    return allocation


@pytest.mark.parametrize(
    ("size", "quality", "n", "cost"),
    [
        ("1024x1792", "hd", 2, "0.24"),  # HD and large: three times the standard square
        ("1792x1024", "standard", 1, "0.08"),  # large
        ("1024x1024", "hd", 1, "0.08"),
        (None, None, 1, "0.04"),  # dall-e-3's default: 1024x1024 standard
        ("512x512", "standard", 3, "0.12"),  # not listed: the unit price
    ],
)
def test_hd_and_large_images_cost_their_price(media, dall_e_3, size, quality, n, cost):
    extra = {k: v for k, v in (("size", size), ("quality", quality)) if v is not None}
    result = media.client(dall_e_3).images.generate(
        model=dall_e_3.model.slug, prompt="a cat", n=n, extra_headers={"X-Request-Id": "req-img"}, **extra
    )
    assert len(result.data) == n
    record = record_of("req-img")
    assert (record.quantity, record.unit, record.cost_usd) == (Decimal(n), "image", Decimal(cost))
    assert counter_of(dall_e_3).cost_used == Decimal(cost)


def test_an_image_edit_is_priced_by_its_form_fields(media, dall_e_3):
    media.client(dall_e_3).images.edit(
        model=dall_e_3.model.slug, image=("a.png", b"\x89PNG" + bytes(100)), prompt="hat", size="1024x1792",
        quality="hd", extra_headers={"X-Request-Id": "req-img"},
    )  # fmt: skip
    assert record_of("req-img").cost_usd == Decimal("0.12")


def test_the_admission_reserves_n_images_at_the_requested_variant():
    price = per_image()
    hd = media_meters.estimate_images({"prompt": "x", "n": 3, "size": "1792x1024", "quality": "hd"})
    assert (hd.variant, cost_for(price, hd)) == ("1792x1024/hd", Decimal("0.36"))
    plain = media_meters.estimate_images({"prompt": "x", "n": 2})
    assert cost_for(price, plain) == Decimal("0.08")
    assert cost_for(per_image({}), hd) == Decimal("0.12")  # no table: the unit price


def test_what_the_answer_says_it_made_wins_over_the_request():
    usage = media_meters.images_usage(
        {"size": "auto", "quality": "auto"}, b'{"data": [{}], "size": "1024x1792", "quality": "HD"}'
    )
    assert (usage.variant, cost_for(per_image(), usage)) == ("1024x1792/hd", Decimal("0.12"))


def test_a_token_price_bills_the_reported_tokens_whatever_the_size(media):
    allocation = media.allocation("gpt-image-1", ModelKind.IMAGE, tokens=True)
    media.client(allocation).images.generate(
        model=allocation.model.slug, prompt="a cat", size="1024x1536", quality="high",
        extra_headers={"X-Request-Id": "req-img"},
    )  # fmt: skip
    record = record_of("req-img")
    assert (record.input_tokens, record.output_tokens, record.cost_usd) == (50, 1000, Decimal("0.04025"))


def test_a_token_priced_reservation_counts_the_larger_oblong_images():
    tokens = PriceVersionFactory.build(input_per_1m=Decimal("5"), output_per_1m=Decimal("40"))
    square = media_meters.estimate_images({"prompt": "", "quality": "high", "size": "1024x1024"})
    oblong = media_meters.estimate_images({"prompt": "", "quality": "high", "size": "1024x1536"})
    assert (square.output_tokens, oblong.output_tokens) == (4160, 6240)
    assert cost_for(tokens, oblong) == Decimal("0.2496")
