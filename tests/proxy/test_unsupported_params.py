"""A model that drops unsupported parameters: the upstream's 400 naming a request parameter it does
not support sends the call once more to the same deployment without it; the answer names what was
dropped; one record, billed once from the attempt that served. Without the switch, or when the 400
names something else, the 400 is relayed as it was."""

import openai
import pytest

from allocations.services import model_update
from proxy.unsupported import DROPPED_HEADER, named_parameter

from .conftest import counter_of, record_of

MESSAGES = [{"role": "user", "content": "Say hello"}]


def _allocation(world, *, drop: bool, name: str = "temperature"):
    allocation = world.allocation(upstream_name=f"fake-unsupported-{name}")
    if drop:
        model_update(model=allocation.model, changes={"drop_unsupported_params": True})
    return allocation


def test_an_unsupported_parameter_is_dropped_and_the_call_served_and_billed_once(world, fake_upstream):
    allocation = _allocation(world, drop=True)
    before = len(fake_upstream.requests)
    raw = world.client(allocation.plaintext).chat.completions.with_raw_response.create(
        model=allocation.model.slug,
        messages=MESSAGES,
        temperature=0.2,
        top_p=0.9,
        extra_headers={"X-Request-Id": "req-drop-1"},
    )
    assert raw.parse().choices[0].message.content == "Hello from the fake"
    assert raw.headers[DROPPED_HEADER] == "temperature"
    sent = [r["body"] for r in fake_upstream.requests[before:]]
    assert len(sent) == 2 and sent[0]["temperature"] == 0.2
    assert "temperature" not in sent[1] and sent[1]["top_p"] == 0.9  # only the named one goes
    record = record_of("req-drop-1")
    assert (record.outcome, record.status_code, record.attempts) == ("success", 200, 2)
    assert (record.input_tokens, record.output_tokens) == (11, 7)
    assert counter_of(allocation).calls == 1


def test_a_stream_is_dropped_before_its_first_byte_and_relayed_whole(world, fake_upstream):
    allocation = _allocation(world, drop=True, name="seed")
    client = world.client(allocation.plaintext)
    with client.chat.completions.with_streaming_response.create(
        model=allocation.model.slug,
        messages=MESSAGES,
        stream=True,
        seed=7,
        extra_headers={"X-Request-Id": "req-drop-2"},
    ) as response:
        assert response.headers[DROPPED_HEADER] == "seed"
        text = "".join(response.iter_lines())
    assert "[DONE]" in text
    record = record_of("req-drop-2")
    assert (record.outcome, record.is_stream, record.attempts, record.output_tokens) == ("success", True, 2, 7)


def test_without_the_switch_the_400_is_relayed(world, fake_upstream):
    allocation = _allocation(world, drop=False)
    before = len(fake_upstream.requests)
    with pytest.raises(openai.BadRequestError) as refused:
        world.client(allocation.plaintext).chat.completions.create(
            model=allocation.model.slug,
            messages=MESSAGES,
            temperature=0.2,
            extra_headers={"X-Request-Id": "req-drop-3"},
        )
    assert refused.value.code == "unsupported_parameter" and DROPPED_HEADER not in refused.value.response.headers
    assert len(fake_upstream.requests) - before == 1
    record = record_of("req-drop-3")
    assert (record.status_code, record.attempts, record.input_tokens) == (400, 1, 0)


def test_what_carries_the_request_is_never_dropped(world, fake_upstream):
    allocation = _allocation(world, drop=True, name="messages")
    before = len(fake_upstream.requests)
    with pytest.raises(openai.BadRequestError):
        world.client(allocation.plaintext).chat.completions.create(model=allocation.model.slug, messages=MESSAGES)
    assert len(fake_upstream.requests) - before == 1


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b'{"error": {"param": "logprobs", "code": "unsupported_parameter", "message": "x"}}', "logprobs"),
        (b'{"error": {"param": "temperature", "code": "unsupported_value", "message": "x"}}', "temperature"),
        (b'{"error": {"message": "Unsupported parameter: \'max_tokens\' is not supported"}}', "max_tokens"),
        (b'{"error": {"message": "Unrecognized request argument supplied: functions"}}', "functions"),
        (b'{"error": {"param": "messages", "code": "invalid_value", "message": "bad"}}', None),
        (b'{"error": "Unsupported"}', None),
        (b"not json", None),
    ],
)
def test_the_parameter_named_by_an_error_body(body, named):
    assert named_parameter(body) == named
