from decimal import Decimal

import openai
import pytest

from quota.models import CallRecord, Reservation

from .conftest import counter_of, record_of
from .fake_upstream import UPSTREAM_KEY

RID = {"X-Request-Id": "req-chat-1"}
MESSAGES = [{"role": "user", "content": "Say hello"}]


def test_a_chat_completion_is_relayed_metered_priced_and_recorded(world, fake_upstream):
    allocation = world.allocation(cost=Decimal("5"))
    raw = world.client(allocation.plaintext).chat.completions.with_raw_response.create(
        model=allocation.model.slug,
        messages=MESSAGES,
        extra_headers=RID,
        temperature=0.2,
        extra_body={"x_unknown_field": "kept"},
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from the fake"
    assert raw.headers["X-Request-Id"] == "req-chat-1"
    sent = fake_upstream.last
    assert sent["body"]["model"] == "gpt-4o-mini"  # rewritten to the upstream name
    assert sent["body"]["x_unknown_field"] == "kept" and sent["body"]["temperature"] == 0.2
    assert sent["headers"]["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    record = record_of("req-chat-1")
    assert (record.outcome, record.status_code, record.endpoint, record.is_stream) == (
        "success",
        200,
        "chat.completions",
        False,
    )
    assert (record.input_tokens, record.cached_tokens, record.output_tokens) == (11, 3, 7)
    # 8 uncached input at $1/1M + 3 cached at $0.50/1M + 7 output at $2/1M
    assert record.cost_usd == Decimal("0.0000235") and record.priced and not record.estimated
    assert record.allocation_id == allocation.pk and record.api_key_id == allocation.key.pk
    counter = counter_of(allocation)
    assert (counter.tokens_used, counter.cost_used, counter.calls) == (18, Decimal("0.0000235"), 1)
    assert (counter.tokens_reserved, counter.cost_reserved) == (0, 0)
    assert not Reservation.objects.exists()


def test_a_bare_model_name_resolves_when_unambiguous(world):
    allocation = world.allocation()
    world.client(allocation.plaintext).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert CallRecord.objects.get().outcome == "success"


def test_a_stream_is_relayed_with_usage_forced_upstream_and_stripped_for_the_client(world, fake_upstream):
    allocation = world.allocation(cost=Decimal("5"))
    client = world.client(allocation.plaintext)
    with client.chat.completions.with_streaming_response.create(
        model=allocation.model.slug, messages=MESSAGES, stream=True, extra_headers=RID
    ) as response:
        assert response.headers["Cache-Control"] == "no-cache"
        assert response.headers["X-Accel-Buffering"] == "no"
        assert response.headers["X-Request-Id"] == "req-chat-1"
        chunks = list(response.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the fake"
    assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks)
    assert fake_upstream.last["body"]["stream_options"] == {"include_usage": True}
    record = record_of("req-chat-1")
    assert (record.outcome, record.is_stream, record.input_tokens, record.output_tokens) == ("success", True, 11, 7)
    assert not record.estimated
    counter = counter_of(allocation)
    assert (counter.tokens_used, counter.tokens_reserved, counter.cost_reserved) == (18, 0, 0)


def test_a_stream_keeps_the_usage_chunk_when_the_client_asks_for_it(world):
    allocation = world.allocation()
    chunks = list(
        world.client(allocation.plaintext).chat.completions.create(
            model=allocation.model.slug,
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=RID,
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 18
    assert record_of("req-chat-1").output_tokens == 7


def test_the_provider_key_and_url_never_reach_the_client(world, fake_upstream):
    allocation = world.allocation(upstream_name="fake-error-401")
    client = world.client(allocation.plaintext)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model=allocation.model.slug, messages=MESSAGES, extra_headers=RID)
    text = caught.value.response.text
    assert UPSTREAM_KEY not in text and fake_upstream.url not in text and "[redacted]" in text
    record = record_of("req-chat-1")
    assert UPSTREAM_KEY not in record.error_message and fake_upstream.url not in record.error_message
