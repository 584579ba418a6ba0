"""/healthz, /readyz and /metrics on the real ASGI application (routed before Django and /v1),
with calls made through it by the official SDK."""

import json
import logging
import re

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ops.logs import JsonFormatter, TextFormatter
from quota.models import CallRecord

from .conftest import METRICS_TOKEN


def samples(text: str) -> dict:
    """{(name, ((label, value), …)): value} of a Prometheus exposition."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def scrape(url: str) -> dict:
    response = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


@pytest.fixture
def metrics_on(settings):
    settings.GATEWAY_METRICS_TOKEN = METRICS_TOKEN


def test_healthz_and_readyz_answer_ok_and_write_no_call_record(gateway):
    before = CallRecord.objects.count()
    alive = httpx.get(f"{gateway}/healthz")
    ready = httpx.get(f"{gateway}/readyz")
    assert (alive.status_code, alive.json()) == (200, {"status": "ok"})
    assert ready.status_code == 200
    body = ready.json()
    assert (body["status"], body["checks"]) == ("ok", {"database": "ok", "draining": "no"})
    assert body["detail"]["redis"] == "ok" and set(body["detail"]) == {"redis", "celery_worker", "celery_beat"}
    assert httpx.head(f"{gateway}/healthz").status_code == 200
    assert httpx.post(f"{gateway}/healthz").status_code == 405
    assert CallRecord.objects.count() == before


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/v1/models", "/accounts/login/"])
def test_every_path_checks_the_host_header_against_allowed_hosts(gateway, path):
    refused = httpx.get(f"{gateway}{path}", headers={"Host": "10.1.2.3:8000", "X-Request-Id": "bad-host"})
    assert refused.status_code == 400
    if path != "/accounts/login/":  # Django's own page there; the contract's envelope elsewhere
        assert refused.json()["error"]["code"] == "bad_request" and refused.headers["x-request-id"] == "bad-host"
    assert httpx.get(f"{gateway}/healthz", headers={"Host": "localhost:8000"}).status_code == 200


def test_metrics_is_404_while_no_token_is_configured(gateway, settings):
    settings.GATEWAY_METRICS_TOKEN = ""
    response = httpx.get(f"{gateway}/metrics", headers={"Authorization": "Bearer anything"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_metrics_refuses_a_missing_or_wrong_token(gateway, metrics_on):
    assert httpx.get(f"{gateway}/metrics").status_code == 401
    wrong = httpx.get(f"{gateway}/metrics", headers={"Authorization": "Bearer " + "x" * len(METRICS_TOKEN)})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"


def test_metrics_count_calls_tokens_spend_and_refusals_without_member_or_key_labels(world, metrics_on):
    allocation = world.allocation()
    slug = allocation.model.slug
    before = scrape(world.gateway_url)
    reply = world.client(allocation.plaintext).chat.completions.create(
        model=slug, messages=[{"role": "user", "content": "hello"}]
    )
    with pytest.raises(openai.AuthenticationError):
        world.client("sk-gw-" + "n" * 43).chat.completions.create(model=slug, messages=[])
    after = scrape(world.gateway_url)

    def grew(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert grew("gateway_requests_total", endpoint="chat.completions", outcome="success", status="200") == 1
    assert grew("gateway_tokens_total", model=slug, direction="input") == reply.usage.prompt_tokens
    assert grew("gateway_tokens_total", model=slug, direction="output") == reply.usage.completion_tokens
    assert grew("gateway_spend_usd_total", model=slug) > 0
    assert grew("gateway_admission_refusals_total", code="unauthorized") == 1
    assert grew("gateway_upstream_seconds_count", endpoint="chat.completions") == 1
    assert grew("gateway_overhead_seconds_count", endpoint="chat.completions") == 1
    assert after[("gateway_calls_in_flight", ())] == before.get(("gateway_calls_in_flight", ()), 0)
    assert after[("gateway_reservations_open", ())] == 0
    assert after[("gateway_settlements_spooled", ())] == 0
    label_values = {value for _, labels in after for _, value in labels}
    assert not label_values & {world.member.username, allocation.key.prefix, str(allocation.pk)}
    assert not any(value.startswith("sk-") for value in label_values)


def test_one_log_line_per_call_with_ids_usage_and_timings_and_never_the_key_or_prompt(world, caplog):
    allocation = world.allocation()
    prompt = "the secret plan is 8f3e1c"
    with caplog.at_level(logging.INFO, logger="gateway.calls"):
        world.client(allocation.plaintext).chat.completions.create(
            model=allocation.model.slug,
            messages=[{"role": "user", "content": prompt}],
            extra_headers={"X-Request-Id": "log-1"},
        )
    [record] = [r for r in caplog.records if getattr(r, "gateway_fields", {}).get("request_id") == "log-1"]
    line = json.loads(JsonFormatter().format(record))
    stored = CallRecord.objects.get(request_id="log-1")
    assert line["allocation_id"] == str(allocation.pk)
    assert (line["model"], line["endpoint"], line["outcome"], line["status"]) == (
        allocation.model.slug,
        "chat.completions",
        "success",
        200,
    )
    assert (line["input_tokens"], line["output_tokens"]) == (stored.input_tokens, stored.output_tokens)
    assert line["cost_usd"] == str(stored.cost_usd)
    assert line["gateway_ms"] >= 0 and line["upstream_ms"] > 0
    text = TextFormatter().format(record)
    assert "request_id=log-1" in text and "outcome=success" in text
    for secret in (allocation.plaintext, allocation.plaintext[:12], prompt, "8f3e1c"):
        assert secret not in json.dumps(line) and secret not in text


def test_readyz_is_503_naming_the_drain_once_the_server_began_shutting_down(gateway):
    from ops import health

    health.draining_started()
    try:
        ready = httpx.get(f"{gateway}/readyz")
    finally:
        health._draining = False
    assert ready.status_code == 503
    assert ready.json()["failed"] == ["draining"] and ready.json()["checks"]["database"] == "ok"
    assert ready.json()["checks"]["draining"].startswith("draining")
    assert httpx.get(f"{gateway}/readyz").status_code == 200


def test_health_detail_and_metrics_show_redis_and_the_celery_heartbeats(gateway, metrics_on):
    from ops import heartbeat

    client = heartbeat._redis()
    client.hdel(heartbeat.KEY, "celery_beat")
    heartbeat.beat(process="celery_worker")
    detail = httpx.get(f"{gateway}/readyz").json()["detail"]
    assert re.fullmatch(r"last seen [0-4] s ago", detail["celery_worker"]) and detail["celery_beat"] == "never seen"
    found = scrape(gateway)
    assert found[("gateway_redis_up", ())] == 1
    assert found[("gateway_celery_heartbeat_age_seconds", (("process", "celery_worker"),))] < 5
    assert found[("gateway_celery_heartbeat_age_seconds", (("process", "celery_beat"),))] == float("inf")


def test_a_zero_cost_is_written_as_0_in_the_call_line():
    from decimal import Decimal

    from ops.observe import _usd

    assert _usd(Decimal("0E-9")) == "0" and _usd(Decimal("0.000000000")) == "0"
    assert _usd(Decimal("0.000009900")) == "0.000009900" and _usd(Decimal("1E+1")) == "10" and _usd(None) is None
