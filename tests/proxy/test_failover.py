"""Failover between a model's deployments, against the real server and fake upstreams on loopback:
a failing deployment is stepped around, the call is billed once from the attempt that served it,
and its record names that deployment and the attempts made."""

import uuid
from collections import Counter
from decimal import Decimal

import httpx
import openai
import pytest
from django.core.cache import cache

from allocations.deployments import deployment_create
from allocations.models import AuditEvent, Deployment
from notifications.models import Kind, Notification
from notifications.services import admin_alerts_scan
from quota import routing
from tests.conftest import free_port

from .conftest import CHAT_MESSAGES, assert_settled_once, chat_call, record_of

pytestmark = pytest.mark.django_db(transaction=True)


def cooldown_ttl(deployment) -> int:
    """Seconds left of the deployment's cooldown key in Redis (-2: none)."""
    key = cache.make_and_validate_key(routing.COOLDOWN_PREFIX + str(deployment.pk))
    return cache._cache.get_client(key).ttl(key)


def two_deployments(world, first_upstream: str, *, second_upstream="gpt-4o-mini", first_provider=None, **second):
    """A model served first by `first_upstream`, then (priority 1) by a working deployment."""
    allocation = world.allocation(upstream_name=first_upstream, provider=first_provider, cost=Decimal("10"))
    backup = deployment_create(
        model=allocation.model, provider=world.provider(), upstream_name=second_upstream, priority=1, **second
    )
    first = Deployment.objects.get(model=allocation.model, priority=0)
    return allocation, first, backup


@pytest.mark.parametrize("failing", ["fake-error-429", "fake-error-500", "fake-error-503"])
def test_a_failing_deployment_is_stepped_around_and_the_call_billed_once(world, fake_upstream, failing):
    allocation, first, backup = two_deployments(world, failing)
    rid = f"fo-{uuid.uuid4().hex[:8]}"
    answer = chat_call(world, allocation, rid)
    assert answer.choices[0].message.content
    record = assert_settled_once(allocation, rid)
    assert (record.outcome, record.attempts, record.deployment_id) == ("success", 2, backup.pk)
    assert record.cost_usd > 0 and record.input_tokens == 11
    assert [r["body"]["model"] for r in fake_upstream.requests] == [failing, "gpt-4o-mini"]
    assert 0 < cooldown_ttl(first) <= 30  # shared: a Redis key with expiry


def test_the_next_call_skips_the_deployment_cooling_down(world, fake_upstream):
    allocation, _first, backup = two_deployments(world, "fake-error-429")
    chat_call(world, allocation, "fo-cool-1")
    fake_upstream.requests.clear()
    chat_call(world, allocation, "fo-cool-2")
    assert [r["body"]["model"] for r in fake_upstream.requests] == ["gpt-4o-mini"]
    record = record_of("fo-cool-2")
    assert (record.attempts, record.deployment_id) == (1, backup.pk)


def test_a_hung_deployment_times_out_and_the_next_one_serves(world, fake_upstream, settings):
    settings.GATEWAY_UPSTREAM_TIMEOUT_S = 1
    allocation, _first, backup = two_deployments(world, "fake-hang")
    assert chat_call(world, allocation, "fo-hang").choices[0].message.content
    record = assert_settled_once(allocation, "fo-hang")
    assert (record.attempts, record.deployment_id) == (2, backup.pk)


def test_a_deployment_that_cannot_be_reached_is_stepped_around(world):
    dead = world.provider(base_url=f"http://127.0.0.1:{free_port()}/v1")  # nothing listens there
    allocation, _first, backup = two_deployments(world, "gpt-4o-mini", first_provider=dead)
    assert chat_call(world, allocation, "fo-dead").choices[0].message.content
    record = assert_settled_once(allocation, "fo-dead")
    assert (record.attempts, record.deployment_id) == (2, backup.pk)


def test_another_4xx_is_relayed_and_not_retried(world, fake_upstream):
    allocation, first, _backup = two_deployments(world, "fake-error-400")
    with pytest.raises(openai.BadRequestError):
        chat_call(world, allocation, "fo-400")
    record = record_of("fo-400")
    assert (record.status_code, record.attempts, record.deployment_id) == (400, 1, first.pk)
    assert [r["body"]["model"] for r in fake_upstream.requests] == ["fake-error-400"]


def test_attempts_stop_at_the_failover_limit(world, fake_upstream, settings):
    settings.GATEWAY_FAILOVER_ATTEMPTS = 1
    allocation, _first, _backup = two_deployments(world, "fake-error-500", second_upstream="fake-error-502")
    deployment_create(model=allocation.model, provider=world.provider(), upstream_name="gpt-4o-mini", priority=2)
    with pytest.raises(openai.APIStatusError) as failed:
        chat_call(world, allocation, "fo-limit")
    assert failed.value.status_code == 502
    record = record_of("fo-limit")
    assert (record.outcome, record.attempts, record.cost_usd or 0) == ("upstream_error", 2, 0)
    assert len(fake_upstream.requests) == 2


def test_a_provider_401_takes_the_deployment_out_and_alerts_once(world, fake_upstream, settings):
    settings.GATEWAY_ALERT_EMAILS = ["ops@example.org"]
    allocation, first, backup = two_deployments(world, "fake-error-401")
    assert chat_call(world, allocation, "fo-401").choices[0].message.content
    record = assert_settled_once(allocation, "fo-401")
    assert (record.attempts, record.deployment_id) == (2, backup.pk)
    first.refresh_from_db()
    assert not first.active and "401" in first.disabled_reason
    assert AuditEvent.objects.filter(action="deployment_updated", target_id=str(first.pk)).count() == 1
    fake_upstream.requests.clear()
    chat_call(world, allocation, "fo-401-again")  # the deployment is out: not tried again
    assert [r["body"]["model"] for r in fake_upstream.requests] == ["gpt-4o-mini"]
    from django.utils import timezone

    assert len(admin_alerts_scan(now=timezone.now())) == 1
    assert admin_alerts_scan(now=timezone.now()) == []
    assert Notification.objects.filter(kind=Kind.PROVIDER_AUTH).count() == 1


def test_a_stream_that_failed_after_its_first_byte_is_not_retried(world, fake_upstream):
    allocation, first, _backup = two_deployments(world, "fake-drop-2")
    client = world.client(allocation.plaintext)
    stream = client.chat.completions.create(
        model=allocation.model.slug, messages=CHAT_MESSAGES, stream=True, extra_headers={"X-Request-Id": "fo-drop"}
    )
    pieces = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            pieces.extend(c.delta.content or "" for c in chunk.choices)
    assert pieces  # the client got the first bytes
    record = record_of("fo-drop")
    assert (record.outcome, record.attempts, record.deployment_id) == ("upstream_error", 1, first.pk)
    assert record.estimated and record.output_tokens > 0  # billed for what was relayed
    assert [r["body"]["model"] for r in fake_upstream.requests] == ["fake-drop-2"]


def test_a_stream_fails_over_before_its_first_byte(world, fake_upstream):
    allocation, _first, backup = two_deployments(world, "fake-error-500")
    client = world.client(allocation.plaintext)
    stream = client.chat.completions.create(
        model=allocation.model.slug, messages=CHAT_MESSAGES, stream=True, extra_headers={"X-Request-Id": "fo-s500"}
    )
    assert "".join(c.delta.content or "" for chunk in stream for c in chunk.choices)
    record = assert_settled_once(allocation, "fo-s500")
    assert (record.attempts, record.deployment_id, record.is_stream) == (2, backup.pk, True)


def test_calls_spread_over_deployments_by_weight(world, fake_upstream):
    allocation = world.allocation(upstream_name="gpt-4o-mini")
    deployment_create(model=allocation.model, provider=world.provider(), upstream_name="gpt-4o", weight=3)
    client = world.client(allocation.plaintext)
    for _ in range(120):
        client.chat.completions.create(model=allocation.model.slug, messages=CHAT_MESSAGES)
    served = Counter(r["body"]["model"] for r in fake_upstream.requests)
    assert 0.6 <= served["gpt-4o"] / 120 <= 0.9, served  # 3:1 (the 2,000-pick check is tests/quota/test_routing)


def test_a_deployment_over_its_own_rpm_sends_the_call_to_the_next(world, fake_upstream):
    allocation, first, backup = two_deployments(world, "gpt-4o-mini", second_upstream="gpt-4o")
    Deployment.objects.filter(pk=first.pk).update(rpm_limit=1)
    from lib.cache import bump_auth_generation

    bump_auth_generation()
    chat_call(world, allocation, "fo-rpm-1")
    chat_call(world, allocation, "fo-rpm-2")
    assert (record_of("fo-rpm-1").deployment_id, record_of("fo-rpm-2").deployment_id) == (first.pk, backup.pk)
    assert record_of("fo-rpm-2").attempts == 1  # a deployment over its limit is skipped, not tried


def test_a_refused_call_records_no_attempt(world):
    allocation = world.allocation(cost=Decimal("0"))
    response = httpx.post(
        world.gateway_url + "/v1/chat/completions",
        json={"model": allocation.model.slug, "messages": CHAT_MESSAGES},
        headers={"Authorization": f"Bearer {allocation.plaintext}", "X-Request-Id": "fo-refused"},
    )
    assert response.status_code == 403
    record = record_of("fo-refused")
    assert (record.attempts, record.deployment_id) == (0, None)


def test_every_deployment_at_its_own_limit_is_429_rate_limited(world, fake_upstream):
    allocation = world.allocation(upstream_name="gpt-4o-mini")
    from allocations.deployments import deployment_update

    deployment_update(deployment=Deployment.objects.get(model=allocation.model), changes={"rpm_limit": 1})
    chat_call(world, allocation, "fo-all-1")
    response = httpx.post(
        world.gateway_url + "/v1/chat/completions",
        json={"model": allocation.model.slug, "messages": CHAT_MESSAGES},
        headers={"Authorization": f"Bearer {allocation.plaintext}", "X-Request-Id": "fo-all-2"},
    )
    assert response.status_code == 429 and response.headers["Retry-After"] == "1"
    assert response.json()["error"]["code"] == "rate_limited"
    record = record_of("fo-all-2")
    assert (record.outcome, record.attempts, record.cost_usd or 0) == ("rejected_rate_limited", 0, 0)
    assert len(fake_upstream.requests) == 1


def test_a_one_deployment_model_reads_no_cooldown_and_runs_no_limit_script(world, monkeypatch):
    from quota import ratelimit

    def forbidden(*args, **kwargs):
        raise AssertionError("the warm path of a one-deployment model must not touch Redis for routing")

    allocation = world.allocation(upstream_name="gpt-4o-mini")
    monkeypatch.setattr(routing, "shared_get_many", forbidden)
    monkeypatch.setattr(ratelimit, "admit_async", forbidden)
    for n in range(3):
        chat_call(world, allocation, f"fo-warm-{n}")
    assert record_of("fo-warm-2").attempts == 1
