import datetime as dt
import uuid
from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone

from quota import ledger
from quota.pricing import Usage
from quota.services import price_in_force
from tests.factories import AllocationFactory, CatalogModelFactory, MemberFactory, PriceVersionFactory

PASSWORD = "pw-for-tests-1"


def settle_call(allocation, *, cost_usd=None, input_tokens=0, output_tokens=0, when=None, outcome="success", **extra):
    """A settled call through the real service. `cost_usd` picks token counts for a $1/M price."""
    when = when or timezone.now()
    if cost_usd is not None:
        input_tokens = int(Decimal(cost_usd) * 1_000_000)  # $1 per 1M input tokens
    price = price_in_force(model_id=allocation.model_id, at=when)
    record = {
        "request_id": str(uuid.uuid4()),
        "allocation": allocation,
        "member": allocation.member,
        "model": allocation.model,
        "endpoint": extra.pop("endpoint", "/v1/chat/completions"),
        "started_at": when,
        "status_code": 200,
        "outcome": outcome,
        **({"api_key": extra.pop("api_key")} if "api_key" in extra else {}),
    }
    usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens, **extra)
    return ledger.settle(admission=None, record=record, usage=usage, price=price, now=when)


def reject_call(allocation, *, when=None, outcome="rejected_paused"):
    """A refused call recorded through the real service (with its daily rollup)."""
    return ledger.record_reject(
        record={
            "request_id": str(uuid.uuid4()),
            "allocation": allocation,
            "member": allocation.member,
            "model": allocation.model,
            "endpoint": "/v1/chat/completions",
            "started_at": when or timezone.now(),
            "status_code": 403,
            "outcome": outcome,
        },
        now=when or timezone.now(),
    )


def dollar_price(model):
    """$1 per 1M input tokens, $2 per 1M output tokens."""
    return PriceVersionFactory(
        model=model,
        effective_from=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
        input_per_1m=Decimal("1"),
        output_per_1m=Decimal("2"),
    )


@pytest.fixture
def alice(db):
    return MemberFactory(username="alice")


@pytest.fixture
def bob(db):
    return MemberFactory(username="bob")


@pytest.fixture
def alice_alloc(alice):
    model = CatalogModelFactory(slug="openai/gpt-4o-mini")
    dollar_price(model)
    return AllocationFactory(
        member=alice, model=model, display_name="GPT-4o mini", quota_cost_usd_per_month=Decimal("10.000000000")
    )


@pytest.fixture
def bob_alloc(bob):
    model = CatalogModelFactory(slug="openai/gpt-4o")
    dollar_price(model)
    return AllocationFactory(member=bob, model=model, quota_cost_usd_per_month=Decimal("5"))


@pytest.fixture
def alice_client(alice):
    client = Client()
    client.force_login(alice)
    return client


@pytest.fixture
def alice_csrf_client(alice):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    return client


@pytest.fixture
def bob_client(bob):
    client = Client()
    client.force_login(bob)
    return client


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # PBKDF2 at production strength costs ~0.5 s per member made by the factory.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
