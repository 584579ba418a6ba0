"""Helpers of the quota tests: an admission and a settlement through the real services."""

import json
from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone

from allocations.services import admin_token_create
from quota import ledger
from quota.ledger import Settlement, settle_values
from quota.pricing import Usage


def admit(allocation, *, tokens=10, cost="0.01", now=None, ttl_s=None):
    return ledger.admit(
        allocation_id=allocation.pk,
        token_cap=allocation.quota_tokens_per_month,
        cost_cap=allocation.quota_cost_usd_per_month,
        est_tokens=tokens,
        est_cost=None if cost is None else Decimal(cost),
        request_id="req",
        now=now or timezone.now(),
        ttl_s=ttl_s,
    )


def record_of_call(allocation, rid: str = "req") -> dict:
    """A successful chat call's identifying record fields, as the proxy passes them to settle."""
    return {
        "request_id": rid,
        "allocation": allocation,
        "endpoint": "chat.completions",
        "started_at": timezone.now(),
        "outcome": "success",
        "status_code": 200,
    }


def settlement(allocation, admission, rid: str, usage: Usage, price) -> Settlement:
    values, cost = settle_values(
        record=record_of_call(allocation, rid),
        usage=usage,
        price=price,
        now=timezone.now(),
    )
    return Settlement(values, admission, usage.total_tokens, cost or Decimal(0))


@pytest.fixture
def token(staff):
    return admin_token_create(user=staff)


@pytest.fixture
def api(token):
    """A JSON client authenticated with an admin bearer token."""

    class Api:
        def __init__(self):
            self.client = Client()

        def _call(self, method, path, body=None, **extra):
            headers = {"HTTP_AUTHORIZATION": f"Bearer {token}", **extra}
            kwargs = {"content_type": "application/json"} if body is not None else {}
            data = json.dumps(body) if body is not None else None
            return getattr(self.client, method)(f"/api/admin/{path}", data, **kwargs, **headers)

        def get(self, path, params=None, **extra):
            return self.client.get(f"/api/admin/{path}", params or {}, HTTP_AUTHORIZATION=f"Bearer {token}", **extra)

        def post(self, path, body=None, **extra):
            return self._call("post", path, body if body is not None else {}, **extra)

        def patch(self, path, body, **extra):
            return self._call("patch", path, body, **extra)

    return Api()
