"""A streamed call's record keeps its time to first token (from the call's start to the first event
relayed to the client) beside its total latency; an answer that is not streamed has none."""

from .conftest import record_of

MESSAGES = [{"role": "user", "content": "Say hello"}]


def _stream(world, upstream_name: str, rid: str) -> str:
    allocation = world.allocation(upstream_name=upstream_name)
    client = world.client(allocation.plaintext)
    with client.chat.completions.with_streaming_response.create(
        model=allocation.model.slug, messages=MESSAGES, stream=True, extra_headers={"X-Request-Id": rid}
    ) as response:
        return "".join(line for line in response.iter_lines())


def test_a_stream_records_the_wait_before_its_first_event_as_its_time_to_first_token(world):
    assert "[DONE]" in _stream(world, "fake-sleep-400", "req-ttft-slow-head")
    record = record_of("req-ttft-slow-head")
    assert record.is_stream and record.ttft_ms is not None
    assert 400 <= record.ttft_ms <= record.latency_ms  # the upstream waited 0.4 s before its head


def test_a_trickling_stream_has_an_early_first_token_and_a_long_latency(world):
    assert "[DONE]" in _stream(world, "fake-trickle", "req-ttft-trickle")
    record = record_of("req-ttft-trickle")
    # The role chunk comes at once, then 0.3 s before every word: the first token is seconds early.
    assert record.ttft_ms is not None and record.latency_ms - record.ttft_ms >= 600


def test_an_answer_that_is_not_streamed_has_a_latency_and_no_time_to_first_token(world):
    allocation = world.allocation(upstream_name="fake-sleep-200")
    world.client(allocation.plaintext).chat.completions.create(
        model=allocation.model.slug, messages=MESSAGES, extra_headers={"X-Request-Id": "req-ttft-plain"}
    )
    record = record_of("req-ttft-plain")
    assert record.ttft_ms is None and record.latency_ms >= 200
