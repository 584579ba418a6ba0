"""Request options that cost more than tokens (SPEC 4): refused with 400 naming the field unless the
model's switch allows them AND its price version in force prices them (built-in tools and chat web
search: when the model's `unpriced_tools` is `refuse`; removal is tests/proxy/test_tools_judged.py);
when both do, billed from what the answer reports (the tier served, the built-in tool calls made)."""

import datetime as dt
from decimal import Decimal

import httpx
import openai
import pytest

from allocations.cost_options import ALLOWED_OPTIONS
from allocations.models import ModelKind
from allocations.services import model_create
from quota.models import CallRecord, Reservation
from quota.pricing import cost_for
from quota.services import price_version_add
from tests.factories import PriceVersionFactory

from .conftest import record_of

CHAT = {"messages": [{"role": "user", "content": "hi"}]}
RESPONSES = {"input": "hi"}
FUNCTION = {"type": "function", "name": "f"}
SINCE = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
# The fake upstream's usage at these prices ($1 / $0.50 cached / $2 per 1M): a chat answer (11 in,
# 3 of them cached, 7 out) costs $0.0000235 at 1x, a Responses answer (13 in, 9 out) $0.000031.
CHAT_TOKENS = Decimal("0.0000235")
RESPONSES_TOKENS = Decimal("0.000031")
MULTIPLIERS = {"priority": "2", "flex": "0.5"}
TOOL_PRICES = {"web_search": "0.01", "web_search_preview": "0.025", "code_interpreter": "0.03", "file_search": "0.0025"}


def post(world, allocation, path: str, body: dict, rid: str = "req-opt") -> httpx.Response:
    headers = {"Authorization": f"Bearer {allocation.plaintext}", "X-Request-Id": rid}
    return httpx.post(f"{world.gateway_url}/v1/{path}", json={"model": allocation.model.slug, **body},
                      headers=headers, timeout=30)  # fmt: skip


def optioned(
    world, upstream_name="gpt-4o-mini", *, allowed=ALLOWED_OPTIONS, multipliers=None, tools=None, price=True,
    unpriced="refuse",
):  # fmt: skip
    """An allocation of a model that allows `allowed`, priced with these option prices."""
    model = model_create(
        slug=f"opt/{upstream_name}-{world._n}",
        provider=world.provider(),
        upstream_name=upstream_name,
        kind=ModelKind.CHAT,
        allowed_options=list(allowed),
        unpriced_tools=unpriced,
    )
    if price:
        price_version_add(
            model=model,
            effective_from=SINCE,
            input_per_1m="1.00",
            cached_input_per_1m="0.50",
            output_per_1m="2.00",
            service_tier_multipliers=MULTIPLIERS if multipliers is None else multipliers,
            tool_call_prices=TOOL_PRICES if tools is None else tools,
        )
    return world.allocation(model=model, priced=False)


def assert_refused(world, fake_upstream, response, field: str, says: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "bad_request" and list(error["fields"]) == [field] and field in error["message"]
    assert not error["message"].startswith(f"{field}: {field}"), error["message"]  # named once at its head
    assert says in error["message"], error["message"]
    assert fake_upstream.requests == []
    assert CallRecord.objects.get(request_id="req-opt").outcome == "rejected_bad_request"


OPTIONS = [
    ("chat/completions", {**CHAT, "service_tier": "priority"}, "service_tier"),
    ("chat/completions", {**CHAT, "service_tier": "flex"}, "service_tier"),
    ("chat/completions", {**CHAT, "web_search_options": {}}, "web_search_options"),
    ("responses", {**RESPONSES, "service_tier": "scale"}, "service_tier"),
    ("responses", {**RESPONSES, "background": True, "stream": True}, "background"),
    ("responses", {**RESPONSES, "tools": [{"type": "web_search"}]}, "tools"),
    ("responses", {**RESPONSES, "tools": [FUNCTION, {"type": "code_interpreter"}]}, "tools"),
    ("responses", {**RESPONSES, "tools": [{"type": "image_generation"}]}, "tools"),
    ("responses", {**RESPONSES, "tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools"),
]


@pytest.mark.parametrize(("path", "body", "field"), OPTIONS)
def test_a_cost_bearing_option_the_model_does_not_enable_is_refused_naming_the_field(
    world, fake_upstream, path, body, field
):
    allocation = optioned(world, allowed=())  # priced, no option enabled (the default)
    response = post(world, allocation, path, body)
    assert_refused(world, fake_upstream, response, field, "not enabled for this model")
    assert CallRecord.objects.get(request_id="req-opt").allocation_id == allocation.pk


@pytest.mark.parametrize(("path", "body", "field"), OPTIONS[:4] + OPTIONS[5:])
def test_an_enabled_option_without_its_price_is_refused_naming_the_field(world, fake_upstream, path, body, field):
    allocation = optioned(world, multipliers={}, tools={})
    response = post(world, allocation, path, body)
    assert_refused(world, fake_upstream, response, field, "enabled but the model's price has no")


@pytest.mark.parametrize(("path", "body", "field"), OPTIONS)
def test_an_enabled_option_of_a_model_without_a_price_in_force_is_refused(world, fake_upstream, path, body, field):
    allocation = optioned(world, price=False)
    response = post(world, allocation, path, body)
    assert_refused(world, fake_upstream, response, field, "has no token price in force")


def test_only_the_enabled_option_passes_and_the_other_is_refused(world, fake_upstream):
    allocation = optioned(world, allowed=["web_search"])
    body = {**RESPONSES, "tools": [{"type": "web_search"}], "service_tier": "priority"}
    assert_refused(world, fake_upstream, post(world, allocation, "responses", body), "service_tier", "not enabled")


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({**RESPONSES, "tools": ["mcp"]}, "tools", "an object with a string 'type'"),
        ({**RESPONSES, "tools": [{"type": "quantum_search"}]}, "tools", "'quantum_search' is not known"),
        ({**CHAT, "tools": [{"type": "web_search"}]}, "tools", "not metered on this endpoint"),
        ({**RESPONSES, "service_tier": "turbo"}, "service_tier", "unknown service tier"),
        ({**RESPONSES, "conversation": "conv_123"}, "conversation", "not relayed"),
        ({**RESPONSES, "conversation": {"id": "conv_123"}}, "conversation", "previous_response_id"),
        ({**RESPONSES, "prompt": {"id": "pmpt_123", "version": "2"}}, "prompt", "tools"),
    ],
)
def test_unknown_tools_tiers_conversations_and_stored_prompts_are_refused_even_where_everything_is_enabled(
    world, fake_upstream, body, field, says
):
    allocation = optioned(world)
    path = "chat/completions" if "messages" in body else "responses"
    assert_refused(world, fake_upstream, post(world, allocation, path, body), field, says)


def test_a_background_response_is_refused_unless_streamed(world, fake_upstream):
    allocation = optioned(world)
    response = post(world, allocation, "responses", {**RESPONSES, "background": True})
    assert_refused(world, fake_upstream, response, "background", "stream: true")
    assert "GET /v1/responses/{id}" in response.json()["error"]["message"]


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
    record = CallRecord.objects.get(request_id="req-opt")
    # A chat answer is read whole only when its tier could change the bill (the price multiplies
    # one): here only its usage is read, and no tier is recorded.
    assert (record.service_tier, record.tool_calls) == ("default" if path == "responses" else "", {})


# --- billing ----------------------------------------------------------------------------------------------


def chat(world, allocation, rid: str, *, stream: bool, **options):
    client = world.client(allocation.plaintext)
    call = {"model": allocation.model.slug, "messages": CHAT["messages"], "extra_headers": {"X-Request-Id": rid}}
    if not stream:
        return client.chat.completions.create(**call, **options)
    return list(client.chat.completions.create(**call, stream=True, **options))


def respond(world, allocation, rid: str, *, stream: bool, **options):
    client = world.client(allocation.plaintext)
    call = {"model": allocation.model.slug, "input": "hi", "extra_headers": {"X-Request-Id": rid}}
    if not stream:
        return client.responses.create(**call, **options)
    return list(client.responses.create(**call, stream=True, **options))


def billed(rid: str) -> CallRecord:
    record = record_of(rid)
    assert record.outcome == "success" and record.priced and not record.estimated
    assert not Reservation.objects.exists()
    return record


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("tier", "multiplier"), [("priority", 2), ("flex", Decimal("0.5"))])
def test_a_chat_completion_at_a_priced_tier_is_billed_at_its_multiplier(world, stream, tier, multiplier):
    allocation = optioned(world)
    answer = chat(world, allocation, "req-tier", stream=stream, service_tier=tier)
    assert (answer[0] if stream else answer).service_tier == tier
    record = billed("req-tier")
    assert (record.service_tier, record.cost_usd) == (tier, CHAT_TOKENS * multiplier)


@pytest.mark.parametrize("stream", [False, True])
def test_the_tier_the_answer_reports_is_billed_when_the_price_has_its_multiplier(world, stream):
    allocation = optioned(world, upstream_name="fake-tier-priority")  # served at priority though auto asked
    chat(world, allocation, "req-tier", stream=stream)
    assert (billed("req-tier").service_tier, billed("req-tier").cost_usd) == ("priority", CHAT_TOKENS * 2)


@pytest.mark.parametrize("stream", [False, True])
def test_a_reported_tier_the_price_does_not_multiply_is_billed_at_the_requested_tier(world, stream):
    allocation = optioned(world, upstream_name="fake-tier-scale")
    respond(world, allocation, "req-tier", stream=stream, service_tier="flex")
    record = billed("req-tier")
    assert (record.service_tier, record.cost_usd) == ("flex", RESPONSES_TOKENS / 2)


@pytest.mark.parametrize("stream", [False, True])
def test_responses_built_in_tool_calls_are_billed_per_call_from_the_answer(world, stream):
    allocation = optioned(world, upstream_name="fake-calls-2")
    tools = [{"type": "web_search"}, {"type": "code_interpreter", "container": {"type": "auto"}}, FUNCTION]
    respond(world, allocation, "req-tools", stream=stream, tools=tools, service_tier="priority")
    record = billed("req-tools")
    assert record.tool_calls == {"web_search": 2, "code_interpreter": 2}
    assert record.cost_usd == RESPONSES_TOKENS * 2 + 2 * Decimal("0.01") + 2 * Decimal("0.03")
    assert record.service_tier == "priority"


def test_a_web_search_call_is_billed_to_the_preview_tool_when_only_that_was_declared(world):
    allocation = optioned(world)
    respond(world, allocation, "req-tools", stream=False, tools=[{"type": "web_search_preview"}])
    record = billed("req-tools")
    assert (record.tool_calls, record.cost_usd) == ({"web_search_preview": 1}, RESPONSES_TOKENS + Decimal("0.025"))


@pytest.mark.parametrize("stream", [False, True])
def test_chat_web_search_options_are_billed_as_one_search_at_the_web_search_price(world, stream):
    allocation = optioned(world, allowed=["web_search_options"], tools={"web_search": "0.01"})
    chat(world, allocation, "req-search", stream=stream, web_search_options={})
    record = billed("req-search")
    assert (record.tool_calls, record.cost_usd) == ({"web_search": 1}, CHAT_TOKENS + Decimal("0.01"))


def test_echoed_content_cannot_plant_a_tier_or_tool_calls(world):
    allocation = optioned(world)
    planted = '"service_tier": "priority", "output": [{"type": "web_search_call"}]'
    respond(world, allocation, "req-plant", stream=False, metadata={"note": planted})
    record = billed("req-plant")
    assert (record.service_tier, record.tool_calls, record.cost_usd) == ("default", {}, RESPONSES_TOKENS)


def test_the_admission_reserves_the_tier_multiplier_and_one_call_per_declared_tool():
    from proxy.meters import estimate_chat, estimate_responses

    price = PriceVersionFactory.build(
        input_per_1m=Decimal(1), output_per_1m=Decimal(2), service_tier_multipliers=MULTIPLIERS,
        tool_call_prices=TOOL_PRICES,
    )  # fmt: skip
    body = {"input": "abcd", "max_output_tokens": 10, "service_tier": "priority"}
    plain = cost_for(price, estimate_responses(body))
    tools = [{"type": "web_search"}, {"type": "web_search"}, {"type": "file_search"}, FUNCTION]
    estimate = estimate_responses({**body, "tools": tools})
    assert estimate.tool_calls == (("file_search", 1), ("web_search", 1))
    assert plain == Decimal("0.000042")  # (1 in + 10 out at $2) per 1M, × 2
    assert cost_for(price, estimate) > plain + Decimal("0.0125")
    search = estimate_chat({"messages": [], "max_tokens": 1, "web_search_options": {}, "service_tier": "flex"})
    assert (search.requested_tier, search.tool_calls) == ("flex", (("web_search", 1),))


# --- background ---------------------------------------------------------------------------------------------


def test_a_background_stream_is_billed_from_its_completed_usage(world):
    allocation = optioned(world, allowed=["background"])
    events = respond(world, allocation, "req-bg", stream=True, background=True)
    assert events[-1].type == "response.completed"
    record = billed("req-bg")
    assert (record.input_tokens, record.output_tokens, record.cost_usd) == (13, 9, RESPONSES_TOKENS)


def test_a_background_stream_whose_client_leaves_is_read_to_its_end_and_billed(world, fake_upstream):
    allocation = optioned(world, upstream_name="fake-trickle", allowed=["background", "web_search"])
    body = {"model": allocation.model.slug, **RESPONSES, "stream": True, "background": True,
            "tools": [{"type": "web_search"}]}  # fmt: skip
    headers = {"Authorization": f"Bearer {allocation.plaintext}", "X-Request-Id": "req-bg"}
    with httpx.stream("POST", f"{world.gateway_url}/v1/responses", json=body, headers=headers, timeout=10) as response:
        seen = b""
        for piece in response.iter_bytes():
            seen += piece
            if seen.count(b"data: ") >= 2:
                break  # leaving the block closes the connection mid-stream
    assert b"response.completed" not in seen
    record = record_of("req-bg", timeout=20)
    assert (record.outcome, record.status_code, record.estimated) == ("client_cancelled", 499, False)
    assert (record.input_tokens, record.output_tokens, record.tool_calls) == (13, 9, {"web_search": 1})
    assert record.cost_usd == RESPONSES_TOKENS + Decimal("0.01")
    assert not Reservation.objects.exists()


def test_a_stream_without_background_whose_client_leaves_is_still_cut(world):
    allocation = optioned(world, upstream_name="fake-trickle", allowed=["background"])
    body = {"model": allocation.model.slug, **RESPONSES, "stream": True}
    headers = {"Authorization": f"Bearer {allocation.plaintext}", "X-Request-Id": "req-cut"}
    with httpx.stream("POST", f"{world.gateway_url}/v1/responses", json=body, headers=headers, timeout=10) as response:
        for piece in response.iter_bytes():
            if b"data: " in piece:
                break
    record = record_of("req-cut")
    assert (record.outcome, record.estimated) == ("client_cancelled", True)


def test_the_sdk_sees_a_refused_option_as_a_bad_request(world):
    allocation = world.allocation()
    with pytest.raises(openai.BadRequestError) as caught:
        chat(world, allocation, "req-sdk", stream=False, service_tier="priority")
    assert caught.value.body["fields"] == {"service_tier": ["service_tier priority is not enabled for this model."]}
