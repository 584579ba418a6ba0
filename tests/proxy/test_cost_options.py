"""Request options that cost more than tokens are refused with 400 naming the field and never reach
the provider; the free forms of the same options pass."""

import httpx
import pytest

from quota.models import CallRecord


def post(world, allocation, path: str, body: dict) -> httpx.Response:
    headers = {"Authorization": f"Bearer {allocation.plaintext}", "X-Request-Id": "req-opt"}
    return httpx.post(f"{world.gateway_url}/v1/{path}", json={"model": allocation.model.slug, **body},
                      headers=headers, timeout=30)  # fmt: skip


CHAT = {"messages": [{"role": "user", "content": "hi"}]}
RESPONSES = {"input": "hi"}


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("chat/completions", {**CHAT, "service_tier": "priority"}, "service_tier"),
        ("chat/completions", {**CHAT, "service_tier": "flex"}, "service_tier"),
        ("chat/completions", {**CHAT, "web_search_options": {}}, "web_search_options"),
        ("responses", {**RESPONSES, "service_tier": "scale"}, "service_tier"),
        ("responses", {**RESPONSES, "background": True}, "background"),
        ("responses", {**RESPONSES, "tools": [{"type": "web_search"}]}, "tools"),
        (
            "responses",
            {**RESPONSES, "tools": [{"type": "function", "name": "f"}, {"type": "code_interpreter"}]},
            "tools",
        ),
        ("responses", {**RESPONSES, "tools": [{"type": "image_generation"}]}, "tools"),
        ("responses", {**RESPONSES, "tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools"),
        ("responses", {**RESPONSES, "tools": ["mcp"]}, "tools"),
    ],
)
def test_a_cost_bearing_option_is_refused_naming_the_field(world, fake_upstream, path, body, field):
    allocation = world.allocation()
    response = post(world, allocation, path, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "bad_request" and list(error["fields"]) == [field] and field in error["message"]
    assert fake_upstream.requests == []
    record = CallRecord.objects.get(request_id="req-opt")
    assert (record.outcome, record.allocation_id) == ("rejected_bad_request", allocation.pk)


FUNCTION = {"type": "function", "name": "f"}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("chat/completions", {**CHAT, "service_tier": "auto"}),
        ("chat/completions", {**CHAT, "service_tier": "default", "tools": [{"type": "function", "function": {}}]}),
        ("responses", {**RESPONSES, "background": False, "tools": [FUNCTION, {"type": "custom", "name": "g"}]}),
    ],
)
def test_the_token_only_forms_pass(world, fake_upstream, path, body):
    allocation = world.allocation()
    assert post(world, allocation, path, body).status_code == 200
    assert len(fake_upstream.requests) == 1
