"""Responses, embeddings and models through the official SDK; the Azure adapter's wire format."""

import base64
import json
import struct
from decimal import Decimal

import openai
import pytest

from allocations.models import ModelKind, ProviderKind
from allocations.services import allocation_pause, api_key_create
from proxy import simulated

from .conftest import counter_of, record_of
from .fake_upstream import UPSTREAM_KEY

RID = {"X-Request-Id": "req-ep"}


def test_a_response_is_metered_with_cached_and_reasoning_tokens(world, fake_upstream):
    allocation = world.allocation(cost=Decimal("1"))
    response = world.client(allocation.plaintext).responses.create(
        model=allocation.model.slug,
        input="hi",
        prompt_cache_key="k",
        reasoning={"effort": "low"},
        max_output_tokens=50,
        extra_headers=RID,
    )
    assert response.output_text == "Hello from the fake"
    assert fake_upstream.last["body"]["model"] == "gpt-4o-mini"
    assert fake_upstream.last["body"]["max_output_tokens"] == 50
    record = record_of("req-ep")
    assert (record.endpoint, record.input_tokens, record.cached_tokens) == ("responses", 13, 4)
    assert (record.output_tokens, record.reasoning_tokens) == (9, 2)
    # 9 uncached x $1 + 4 cached x $0.50 + 9 output x $2, per 1M
    assert record.cost_usd == Decimal("0.000029")


def test_a_streamed_response_is_billed_from_response_completed(world):
    allocation = world.allocation()
    events = list(
        world.client(allocation.plaintext).responses.create(
            model=allocation.model.slug, input="hi", reasoning={"effort": "low"}, stream=True, extra_headers=RID
        )
    )
    assert events[-1].type == "response.completed"
    record = record_of("req-ep")
    assert (record.outcome, record.is_stream, record.output_tokens, record.reasoning_tokens) == ("success", True, 9, 2)
    assert not record.estimated and counter_of(allocation).tokens_used == 22


def test_a_responses_stream_dropped_by_the_upstream_is_an_upstream_error_on_an_estimate(world):
    allocation = world.allocation(upstream_name="fake-drop-2")
    with pytest.raises(openai.APIError):
        list(
            world.client(allocation.plaintext).responses.create(
                model=allocation.model.slug, input="hi", stream=True, extra_headers=RID
            )
        )
    record = record_of("req-ep")
    assert (record.outcome, record.estimated, record.output_tokens) == ("upstream_error", True, 3)  # "Hello from"


def test_embeddings_are_metered_on_input_tokens(world, fake_upstream):
    allocation = world.allocation(upstream_name="text-embedding-3-small", kind=ModelKind.EMBEDDING)
    result = world.client(allocation.plaintext).embeddings.create(
        model=allocation.model.slug, input="hello", encoding_format="float", extra_headers=RID
    )
    assert result.data[0].embedding == [0.1, 0.2]
    record = record_of("req-ep")
    assert (record.endpoint, record.input_tokens, record.output_tokens, record.cost_usd) == (
        "embeddings",
        5,
        0,
        Decimal("0.000005"),
    )


def test_a_chat_model_cannot_be_used_for_embeddings(world):
    allocation = world.allocation()
    with pytest.raises(openai.BadRequestError) as caught:
        world.client(allocation.plaintext).embeddings.create(model=allocation.model.slug, input="x")
    assert caught.value.code == "model_kind_mismatch"


def test_models_lists_and_retrieves_only_the_keys_active_models(world):
    first = world.allocation(slug="sim/gpt-4o-mini")
    second = world.allocation(upstream_name="gpt-4o")
    world.allocation(upstream_name="gpt-other")  # the member's, but not in the key
    _, plaintext = api_key_create(member=world.member, name="both", allocations=[first, second])
    client = world.client(plaintext)
    assert sorted(m.id for m in client.models.list()) == sorted([first.model.slug, second.model.slug])
    assert client.models.retrieve("sim/gpt-4o-mini").id == "sim/gpt-4o-mini"  # an id with a slash
    allocation_pause(allocation=second)
    assert [m.id for m in client.models.list()] == ["sim/gpt-4o-mini"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(second.model.slug)
    with pytest.raises(openai.AuthenticationError):
        world.client("sk-gw-unknown-key").models.list()


@pytest.mark.parametrize(
    ("api_version", "path", "query"),
    [
        ("2024-10-21", "/openai/deployments/my-deployment/chat/completions", {"api-version": "2024-10-21"}),
        ("", "/openai/v1/chat/completions", {}),
        ("v1", "/openai/v1/chat/completions", {}),
    ],
)
def test_the_azure_adapter_speaks_azures_paths_and_headers(world, fake_upstream, api_version, path, query):
    provider = world.provider(kind=ProviderKind.AZURE, api_version=api_version)
    allocation = world.allocation(upstream_name="my-deployment", provider=provider)
    chunks = list(
        world.client(allocation.plaintext).chat.completions.create(
            model=allocation.model.slug, messages=[{"role": "user", "content": "hi"}], stream=True, extra_headers=RID
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the fake"
    sent = fake_upstream.last
    assert (sent["path"], sent["query"]) == (path, query)
    assert sent["headers"]["api-key"] == UPSTREAM_KEY and "Authorization" not in sent["headers"]
    assert sent["body"]["model"] == "my-deployment"
    assert record_of("req-ep").output_tokens == 7


def test_azure_errors_never_show_the_deployment(world):
    provider = world.provider(kind=ProviderKind.AZURE, api_version="2024-10-21")
    allocation = world.allocation(upstream_name="fake-error-404", provider=provider)
    with pytest.raises(openai.NotFoundError) as caught:
        world.client(allocation.plaintext).chat.completions.create(
            model=allocation.model.slug, messages=[{"role": "user", "content": "hi"}]
        )
    assert UPSTREAM_KEY not in caught.value.response.text


def test_the_simulated_provider_answers_every_token_endpoint_in_process(world):
    provider = world.provider(kind=ProviderKind.SIMULATED, base_url="")
    chat = world.allocation(provider=provider, slug="sim/gpt-4o-mini")
    client = world.client(chat.plaintext)
    completion = client.chat.completions.create(
        model="sim/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=4, extra_headers=RID
    )
    assert completion.choices[0].finish_reason == "length" and completion.usage.completion_tokens == 4
    assert record_of("req-ep").output_tokens == 4
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage.completion_tokens == len(text.split(" "))
    assert text.startswith("This is a simulated reply")
    response = client.responses.create(model="gpt-4o-mini", input="hi")
    assert response.output_text == text and response.usage.output_tokens == chunks[-1].usage.completion_tokens
    events = list(client.responses.create(model="gpt-4o-mini", input="hi", stream=True))
    assert events[-1].type == "response.completed"
    embed = world.allocation(provider=provider, upstream_name="sim-embed", kind=ModelKind.EMBEDDING)
    vectors = world.client(embed.plaintext).embeddings.create(model=embed.model.slug, input=["a", "b"])
    assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 8


def test_the_simulated_embeddings_honour_base64():
    reply = simulated.reply("embeddings", {"model": "m", "input": "abc", "encoding_format": "base64", "dimensions": 3})
    vector = json.loads(reply._body)["data"][0]["embedding"]
    assert len(struct.unpack("<3f", base64.b64decode(vector))) == 3
