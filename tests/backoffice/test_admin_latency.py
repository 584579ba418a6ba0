"""Call records in admin show the whole call's latency and, for a stream, its time to first token:
in the call-records list and in the member page's recent calls."""

import datetime as dt

import pytest
from django.utils import timezone

from quota import ledger
from quota.models import CallRecord
from quota.pricing import Usage
from quota.services import price_in_force
from tests.factories import AllocationFactory, CatalogModelFactory
from tests.portal.conftest import dollar_price


def settle_call(allocation, *, started, latency_ms: int, ttft_ms: int | None):
    record = {
        "request_id": f"req-latency-{latency_ms}",
        "allocation": allocation,
        "member": allocation.member,
        "model": allocation.model,
        "endpoint": "chat.completions",
        "started_at": started,
        "finished_at": started + dt.timedelta(milliseconds=latency_ms),
        "ttft_ms": ttft_ms,
        "is_stream": ttft_ms is not None,
        "status_code": 200,
        "outcome": "success",
    }
    price = price_in_force(model_id=allocation.model_id, at=started)
    ledger.settle(admission=None, record=record, usage=Usage(input_tokens=10), price=price, now=started)


@pytest.fixture
def calls(db):
    model = CatalogModelFactory(slug="openai/gpt-4o-mini")
    dollar_price(model)
    allocation = AllocationFactory(model=model)
    started = timezone.now() - dt.timedelta(minutes=1)
    settle_call(allocation, started=started, latency_ms=1234, ttft_ms=310)
    settle_call(allocation, started=started, latency_ms=2345, ttft_ms=None)
    return allocation


def test_the_call_list_shows_latency_and_the_streams_first_token(admin_client, calls):
    assert sorted(CallRecord.objects.values_list("ttft_ms", flat=True), key=str) == [310, None]
    page = admin_client.get("/admin/quota/callrecord/").content.decode()
    assert "Latency / first token (ms)" in page  # the column header (capitalised by admin)
    assert ">1,234 / 310<" in page and ">2,345<" in page


def test_the_member_page_shows_latency_and_the_streams_first_token(admin_client, calls):
    page = admin_client.get(f"/admin/members/{calls.member_id}/").content.decode()
    assert "Latency / first token (ms)" in page
    assert "1,234 / 310" in page and "2,345</td>" in page
