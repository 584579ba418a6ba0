"""Tools judged by who runs them (SPEC 4): client tools pass as they are; a built-in tool the model
does not allow and price is removed before the request goes upstream (named in
`x-gateway-removed-tools`) or refused when the model says `unpriced_tools = refuse`; a namespace is
judged by what it holds; an unknown type is refused unless the model lets it through. The captured
request of a real Codex CLI turn (tests/agents/codex_turn_request.json) goes upstream unchanged
apart from the model name and the removed web search."""

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from allocations.models import ModelKind
from allocations.services import model_create, model_update
from quota.models import CallRecord, Reservation
from quota.services import price_version_add

from .conftest import record_of

CODEX_TURN = json.loads((Path(__file__).parents[1] / "agents" / "codex_turn_request.json").read_text())
FUNCTION = {"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}
SEARCH = {"type": "web_search", "external_web_access": False}
SINCE = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
HEADER = "x-gateway-removed-tools"


def model_of(world, *, allowed=(), unpriced="remove", extra=(), tool_prices=None, upstream_name="gpt-4o-mini"):
    model = model_create(
        slug=f"tools/{upstream_name}-{world._n}",
        provider=world.provider(),
        upstream_name=upstream_name,
        kind=ModelKind.CHAT,
        allowed_options=list(allowed),
        unpriced_tools=unpriced,
        extra_client_tools=list(extra),
    )
    price_version_add(
        model=model, effective_from=SINCE, input_per_1m="1.00", cached_input_per_1m="0.50", output_per_1m="2.00",
        tool_call_prices=tool_prices or {},
    )  # fmt: skip
    return world.allocation(model=model, priced=False)


def post(world, allocation, body: dict, *, path="responses", rid="req-tools") -> httpx.Response:
    headers = {"Authorization": f"Bearer {allocation.plaintext}", "X-Request-Id": rid}
    body = {**body, "model": allocation.model.slug}
    return httpx.post(f"{world.gateway_url}/v1/{path}", json=body, headers=headers, timeout=30)


def respond(tools: list, **extra) -> dict:
    return {"input": "hi", "tools": tools, **extra}


def refused(response: httpx.Response, field: str, names: str, fake_upstream) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], list(error["fields"])) == ("bad_request", [field])
    assert names in error["message"], error["message"]
    assert fake_upstream.requests == [] and HEADER not in response.headers
    assert CallRecord.objects.get(request_id="req-tools").outcome == "rejected_bad_request"


# --- a Codex turn ----------------------------------------------------------------------------------


def test_a_codex_turn_goes_upstream_as_it_came_less_the_unpriced_web_search(world, fake_upstream):
    allocation = model_of(world)
    with httpx.stream(
        "POST", f"{world.gateway_url}/v1/responses", json={**CODEX_TURN, "model": allocation.model.slug},
        headers={"Authorization": f"Bearer {allocation.plaintext}", "X-Request-Id": "req-tools"}, timeout=30,
    ) as response:  # fmt: skip
        assert response.status_code == 200
        assert response.headers[HEADER] == "web_search"
        events = b"".join(response.iter_bytes())
    assert b"response.completed" in events
    sent = fake_upstream.last["body"]
    expected = {**CODEX_TURN, "model": "gpt-4o-mini", "tools": [t for t in CODEX_TURN["tools"] if t != SEARCH]}
    assert sent == expected
    assert [t["type"] for t in sent["tools"]].count("function") == 7 and "web_search" not in json.dumps(sent["tools"])
    # What agents send for their own state and caching is relayed unchanged.
    for field in ("include", "store", "prompt_cache_key", "client_metadata", "parallel_tool_calls", "reasoning"):
        assert sent[field] == CODEX_TURN[field], field
    assert sent["include"] == ["reasoning.encrypted_content"] and sent["store"] is False
    record = record_of("req-tools")
    assert record.outcome == "success" and record.priced and record.cost_usd > 0
    assert not Reservation.objects.exists()


def test_a_codex_turn_on_a_model_that_refuses_unpriced_tools_is_refused_naming_web_search(world, fake_upstream):
    allocation = model_of(world, unpriced="refuse")
    response = post(world, allocation, CODEX_TURN)
    refused(response, "tools", "tool web_search is not enabled for this model", fake_upstream)


def test_a_codex_turn_with_web_search_allowed_and_priced_keeps_it_and_bills_its_calls(world, fake_upstream):
    allocation = model_of(world, allowed=["web_search"], tool_prices={"web_search": "0.01"})
    response = post(world, allocation, {**CODEX_TURN, "stream": False})
    assert response.status_code == 200 and HEADER not in response.headers
    assert fake_upstream.last["body"]["tools"] == CODEX_TURN["tools"]
    record = record_of("req-tools")
    assert record.tool_calls == {"web_search": 1}  # the fake answers one call per declared built-in tool
    assert record.cost_usd == Decimal("0.000029") + Decimal("0.01")  # 4 of 13 input tokens cached (prompt_cache_key)


def test_a_body_with_nothing_removed_goes_upstream_unchanged(world, fake_upstream):
    allocation = model_of(world)
    tools = [FUNCTION, {"type": "custom", "name": "g"}, {"type": "local_shell"}, {"type": "apply_patch"}]
    body = respond(tools, tool_choice={"type": "function", "name": "f"}, store=False, reasoning={"effort": "low"})
    response = post(world, allocation, body)
    assert response.status_code == 200 and HEADER not in response.headers
    assert fake_upstream.last["body"] == {**body, "model": "gpt-4o-mini"}


# --- namespaces --------------------------------------------------------------------------------------------


def namespace(*tools) -> dict:
    return {"type": "namespace", "name": "group", "description": "tools", "tools": list(tools)}


def test_a_namespace_of_client_tools_passes(world, fake_upstream):
    allocation = model_of(world)
    tools = [namespace(FUNCTION, {**FUNCTION, "name": "g"})]
    assert post(world, allocation, respond(tools)).status_code == 200
    assert fake_upstream.last["body"]["tools"] == tools


def test_a_built_in_inside_a_namespace_is_removed_like_the_built_in(world, fake_upstream):
    allocation = model_of(world)
    response = post(world, allocation, respond([FUNCTION, namespace(FUNCTION, SEARCH), namespace(SEARCH)]))
    assert response.status_code == 200 and response.headers[HEADER] == "web_search"
    assert fake_upstream.last["body"]["tools"] == [FUNCTION, namespace(FUNCTION)]  # an emptied namespace goes


def test_a_built_in_inside_a_namespace_is_refused_like_the_built_in(world, fake_upstream):
    allocation = model_of(world, unpriced="refuse")
    response = post(world, allocation, respond([namespace(FUNCTION, {"type": "code_interpreter"})]))
    refused(response, "tools", "tool code_interpreter is not enabled", fake_upstream)


def test_a_priced_built_in_inside_a_namespace_passes(world, fake_upstream):
    allocation = model_of(world, allowed=["web_search"], tool_prices={"web_search": "0.01"})
    tools = [namespace(FUNCTION, SEARCH)]
    response = post(world, allocation, respond(tools))
    assert response.status_code == 200 and HEADER not in response.headers
    assert fake_upstream.last["body"]["tools"] == tools


def test_an_unknown_type_inside_a_namespace_is_refused(world, fake_upstream):
    allocation = model_of(world)
    refused(post(world, allocation, respond([namespace({"type": "teleport"})])), "tools", "'teleport'", fake_upstream)


# --- removal and refusal, one by one ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allowed", "prices", "why"),
    [
        ((), {}, "not enabled for this model"),
        (("file_search", "web_search"), {"web_search": "0.01"}, "price has no 'file_search' tool-call price"),
    ],
)
def test_each_unpriced_built_in_is_removed_and_named_once(world, fake_upstream, allowed, prices, why):
    allocation = model_of(world, allowed=allowed, tool_prices=prices)
    tools = [{"type": "file_search", "vector_store_ids": ["vs_1"]}, FUNCTION, {"type": "file_search"}, SEARCH]
    response = post(world, allocation, respond(tools))
    assert response.status_code == 200
    kept = [FUNCTION] if not allowed else [FUNCTION, SEARCH]
    assert response.headers[HEADER] == ("file_search,web_search" if not allowed else "file_search")
    assert fake_upstream.last["body"]["tools"] == kept
    refusing = model_of(world, allowed=allowed, tool_prices=prices, unpriced="refuse")
    fake_upstream.requests.clear()
    CallRecord.objects.all().delete()
    refused(post(world, refusing, respond(tools)), "tools", why, fake_upstream)


def test_removed_tools_are_named_on_a_stream_and_on_an_upstream_error(world, fake_upstream):
    streamed = model_of(world)
    with httpx.stream(
        "POST", f"{world.gateway_url}/v1/responses", headers={"Authorization": f"Bearer {streamed.plaintext}"},
        json={"model": streamed.model.slug, **respond([SEARCH]), "stream": True}, timeout=30,
    ) as response:  # fmt: skip
        assert (response.status_code, response.headers[HEADER]) == (200, "web_search")
        response.read()
    failing = model_of(world, upstream_name="fake-error-400")
    response = post(world, failing, respond([SEARCH]), rid="req-failing")
    assert (response.status_code, response.headers[HEADER]) == (400, "web_search")


def test_an_unknown_tool_type_is_refused_unless_the_model_lets_it_through(world, fake_upstream):
    strict = model_of(world)
    body = respond([FUNCTION, {"type": "browser_use", "name": "b"}])
    refused(post(world, strict, body), "tools", "'browser_use' is not known to the gateway", fake_upstream)
    lenient = model_of(world, extra=["browser_use"])
    response = post(world, lenient, body, rid="req-lenient")
    assert response.status_code == 200 and HEADER not in response.headers
    assert fake_upstream.last["body"]["tools"] == body["tools"]


def test_a_model_change_of_its_tool_rules_applies_to_the_next_call(world, fake_upstream):
    allocation = model_of(world)
    assert post(world, allocation, respond([SEARCH]), rid="req-1").headers[HEADER] == "web_search"
    model_update(model=allocation.model, changes={"unpriced_tools": "refuse"})
    fake_upstream.requests.clear()
    refused(post(world, allocation, respond([SEARCH])), "tools", "web_search", fake_upstream)


# --- tool_choice -----------------------------------------------------------------------------------------


def test_tool_choice_forcing_a_removed_tool_is_refused(world, fake_upstream):
    allocation = model_of(world)
    response = post(world, allocation, respond([FUNCTION, SEARCH], tool_choice={"type": "web_search"}))
    refused(response, "tool_choice", "forces the tool 'web_search'", fake_upstream)


def test_tool_choice_allowed_tools_loses_the_removed_ones(world, fake_upstream):
    allocation = model_of(world)
    choice = {
        "type": "allowed_tools",
        "mode": "auto",
        "tools": [{"type": "function", "name": "f"}, {"type": "web_search"}],
    }
    response = post(world, allocation, respond([FUNCTION, SEARCH], tool_choice=choice))
    assert response.status_code == 200
    assert fake_upstream.last["body"]["tool_choice"] == {**choice, "tools": [{"type": "function", "name": "f"}]}
    only = {**choice, "tools": [{"type": "web_search"}]}
    fake_upstream.requests.clear()
    CallRecord.objects.all().delete()
    refused(
        post(world, allocation, respond([FUNCTION, SEARCH], tool_choice=only)),
        "tool_choice",
        "allows only",
        fake_upstream,
    )


def test_tool_choice_required_with_every_tool_removed_is_refused(world, fake_upstream):
    allocation = model_of(world)
    refused(
        post(world, allocation, respond([SEARCH], tool_choice="required")), "tool_choice", "every tool", fake_upstream
    )


# --- chat ----------------------------------------------------------------------------------------------------


def test_chat_web_search_options_are_removed_or_refused_like_a_built_in_tool(world, fake_upstream):
    body = {"messages": [{"role": "user", "content": "hi"}], "web_search_options": {}}
    allocation = model_of(world)
    response = post(world, allocation, body, path="chat/completions")
    assert (response.status_code, response.headers[HEADER]) == (200, "web_search_options")
    assert "web_search_options" not in fake_upstream.last["body"]
    assert record_of("req-tools").tool_calls == {}
    fake_upstream.requests.clear()
    CallRecord.objects.all().delete()
    refusing = model_of(world, unpriced="refuse")
    response = post(world, refusing, body, path="chat/completions")
    refused(response, "web_search_options", "chat web_search_options is not enabled", fake_upstream)


def test_a_chat_built_in_tool_is_removed_since_chat_meters_none(world, fake_upstream):
    allocation = model_of(world, allowed=["web_search"], tool_prices={"web_search": "0.01"})
    body = {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {}}, SEARCH]}
    response = post(world, allocation, body, path="chat/completions")
    assert (response.status_code, response.headers[HEADER]) == (200, "web_search")
    assert fake_upstream.last["body"]["tools"] == [{"type": "function", "function": {}}]


def test_the_openai_sdk_reads_the_answer_and_the_removed_tools_header(world, fake_upstream):
    allocation = model_of(world)
    client = world.client(allocation.plaintext)
    raw = client.responses.with_raw_response.create(
        model=allocation.model.slug, input="hi", tools=[FUNCTION, SEARCH], tool_choice="auto", store=False
    )
    assert raw.headers[HEADER] == "web_search"
    assert raw.parse().output_text == "Hello from the fake"
    assert fake_upstream.last["body"]["tools"] == [FUNCTION]
