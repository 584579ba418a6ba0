"""The Codex CLI, unchanged, through the gateway (`gateway_project.serve`): its turns complete and
are billed, its client tools pass, the web search it declares on every turn is removed when the
model does not price it (or the turn refused when the model says so), and a turn where the model
calls a function and Codex answers with the output takes two billed requests."""

import datetime as dt
import json
import time

import pytest

from allocations.models import ModelKind, ProviderKind
from allocations.services import model_create
from proxy.simulated import REPLY
from quota.models import CallRecord, Reservation
from quota.services import price_version_add
from tests.proxy.conftest import World

from .conftest import codex_exec
from .responses_upstream import DEFAULT_TEXT

pytestmark = pytest.mark.xdist_group("codex-cli")
SINCE = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
HEADER = "x-gateway-removed-tools"


def allocation_of(tap, upstream, *, simulated=False, unpriced="remove", allowed=(), tool_prices=None):
    world = World(tap.target, upstream.url)
    provider = world.provider(kind=ProviderKind.SIMULATED, base_url="") if simulated else world.provider()
    model = model_create(
        slug="org/gpt-5-codex", provider=provider, upstream_name="gpt-5-codex", kind=ModelKind.CHAT,
        allowed_options=list(allowed), unpriced_tools=unpriced,
    )  # fmt: skip
    price_version_add(
        model=model, effective_from=SINCE, input_per_1m="1.25", cached_input_per_1m="0.125", output_per_1m="10",
        tool_call_prices=tool_prices or {},
    )  # fmt: skip
    return world.allocation(model=model, priced=False)


def billed_records(count: int) -> list[CallRecord]:
    """The calls' records (a stream settles right after its last event: waited for a bounded moment)."""
    deadline = time.monotonic() + 10
    while CallRecord.objects.count() < count and time.monotonic() < deadline:
        time.sleep(0.05)
    records = list(CallRecord.objects.order_by("started_at"))
    assert [r.outcome for r in records] == ["success"] * count, [(r.outcome, r.error_message) for r in records]
    assert all(r.priced and r.cost_usd > 0 and r.input_tokens > 0 and r.is_stream for r in records)
    assert not Reservation.objects.exists()
    return records


def test_codex_exec_says_hello_through_the_gateway_and_the_call_is_billed(gateway, upstream, tmp_path):
    allocation = allocation_of(gateway, upstream)
    done = codex_exec(gateway, key=allocation.plaintext, model="org/gpt-5-codex", prompt="Say hello.", home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == DEFAULT_TEXT
    [answer] = gateway.answers
    assert (answer["status"], answer["headers"][HEADER]) == (200, "web_search")
    [sent] = upstream.requests
    types = [tool["type"] for tool in sent["body"]["tools"]]
    assert "web_search" not in types and "namespace" in types and types.count("function") >= 5
    assert sent["body"]["model"] == "gpt-5-codex" and sent["body"]["store"] is False
    [record] = billed_records(1)
    assert record.tool_calls == {} and record.model.slug == "org/gpt-5-codex"


def test_a_codex_turn_on_a_model_that_refuses_unpriced_tools_fails_naming_web_search(gateway, upstream, tmp_path):
    allocation = allocation_of(gateway, upstream, unpriced="refuse")
    done = codex_exec(gateway, key=allocation.plaintext, model="org/gpt-5-codex", prompt="Say hello.", home=tmp_path)
    assert done.returncode != 0
    assert "web_search" in done.stdout + done.stderr
    assert [a["status"] for a in gateway.answers] == [400] and upstream.requests == []
    record = CallRecord.objects.get()  # a refusal's record is written before its answer
    assert (record.outcome, record.error_code) == ("rejected_bad_request", "bad_request")
    assert "tool web_search is not enabled for this model" in record.error_message


def test_a_codex_turn_with_web_search_priced_keeps_it(gateway, upstream, tmp_path):
    allocation = allocation_of(gateway, upstream, allowed=["web_search"], tool_prices={"web_search": "0.01"})
    done = codex_exec(gateway, key=allocation.plaintext, model="org/gpt-5-codex", prompt="Say hello.", home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert HEADER not in gateway.answers[0]["headers"]
    assert {"type": "web_search", "external_web_access": False} in upstream.requests[0]["body"]["tools"]
    billed_records(1)


def test_a_codex_turn_where_the_model_calls_a_function_and_codex_answers_it(gateway, upstream, tmp_path):
    allocation = allocation_of(gateway, upstream)
    upstream.script[:] = [
        {"call": "exec_command", "arguments": {"cmd": "echo tool-output-42"}},
        {"text": "The command printed tool-output-42."},
    ]
    done = codex_exec(gateway, key=allocation.plaintext, model="org/gpt-5-codex", prompt="Run echo.", home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "The command printed tool-output-42."
    first, second = (r["body"] for r in upstream.requests)
    call = next(item for item in second["input"] if item.get("type") == "function_call")
    output = next(item for item in second["input"] if item.get("type") == "function_call_output")
    assert call["name"] == "exec_command" and output["call_id"] == call["call_id"]
    assert "tool-output-42" in json.dumps(output["output"])
    assert first["prompt_cache_key"] == second["prompt_cache_key"]  # one conversation, relayed as sent
    assert [a["headers"][HEADER] for a in gateway.answers] == ["web_search", "web_search"]
    first_record, second_record = billed_records(2)
    assert second_record.input_tokens > first_record.input_tokens


def test_codex_exec_against_the_simulated_provider(gateway, upstream, tmp_path):
    allocation = allocation_of(gateway, upstream, simulated=True)
    done = codex_exec(gateway, key=allocation.plaintext, model="org/gpt-5-codex", prompt="Say hello.", home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == REPLY
    assert upstream.requests == []
    billed_records(1)
