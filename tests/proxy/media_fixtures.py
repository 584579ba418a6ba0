"""Fixtures of the media endpoint tests, imported by tests/proxy/test_media_*.py."""

from decimal import Decimal

import httpx
import pytest

from tests.factories import PriceVersionFactory

from .media_upstream import start_media_upstream


@pytest.fixture(scope="session")
def media_upstream():
    fake, stop = start_media_upstream()
    yield fake
    stop()


class Media:
    """Allocations on the media fake upstream, priced per unit or per token."""

    def __init__(self, world, upstream):
        self.world = world
        self.upstream = upstream
        self.provider = world.provider(base_url=upstream.url + "/v1")

    def allocation(self, upstream_name, kind, *, unit=None, per_unit=None, tokens=False, cost=None, provider=None):
        allocation = self.world.allocation(
            upstream_name, kind=kind, provider=provider or self.provider, priced=False, cost=cost
        )
        if unit:
            PriceVersionFactory(model=allocation.model, unit=unit, price_per_unit=Decimal(per_unit),
                                input_per_1m=None, output_per_1m=None)  # fmt: skip
        if tokens:
            PriceVersionFactory(model=allocation.model, input_per_1m=Decimal("5"), output_per_1m=Decimal("40"))
        return allocation

    def client(self, allocation):
        return self.world.client(allocation.plaintext)

    def post(self, allocation, path, json, rid="req-media"):
        """Rerank and OCR are not in the openai SDK: plain HTTP."""
        headers = {"Authorization": f"Bearer {allocation.plaintext}", "X-Request-Id": rid}
        return httpx.post(f"{self.world.gateway_url}/v1/{path}", json=json, headers=headers, timeout=30)


@pytest.fixture
def media(world, media_upstream):
    media_upstream.requests.clear()
    return Media(world, media_upstream)


__all__ = ["media", "media_upstream"]
