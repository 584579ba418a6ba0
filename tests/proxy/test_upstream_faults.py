"""Upstream failures and clients that go away: the right status for the client, and always exactly
one call record, with the counters right and the reservation released. Against
gateway_project.serve: how the server relays, times out and notices a client leaving."""

import json
import socket
import time
from decimal import Decimal

import httpx
import openai
import pytest

from quota.models import CallRecord, Reservation

from .conftest import counter_of, record_of

MESSAGES = [{"role": "user", "content": "Say hello"}]
RID = {"X-Request-Id": "req-fault"}
SERVE_ENV = {"GATEWAY_UPSTREAM_TIMEOUT_S": "1.5"}


@pytest.fixture
def world(served_world):
    return served_world


def released(allocation):
    counter = counter_of(allocation)
    return not Reservation.objects.exists() and counter.tokens_reserved == 0 and counter.cost_reserved == 0


def test_an_upstream_4xx_is_relayed_with_its_status_and_body(world):
    allocation = world.allocation(upstream_name="fake-error-429", cost=Decimal("1"))
    with pytest.raises(openai.RateLimitError) as caught:
        world.client(allocation.plaintext).chat.completions.create(
            model=allocation.model.slug, messages=MESSAGES, extra_headers=RID
        )
    assert caught.value.body["code"] == "invalid_api_key"  # the upstream's own error body
    record = record_of("req-fault")
    assert (record.outcome, record.status_code, record.error_code) == ("upstream_error", 429, "invalid_api_key")
    assert record.total_tokens == 0 and released(allocation)


def test_an_upstream_5xx_is_a_502_upstream_error(world):
    allocation = world.allocation(upstream_name="fake-error-500")
    with pytest.raises(openai.APIStatusError) as caught:
        world.client(allocation.plaintext).chat.completions.create(
            model=allocation.model.slug, messages=MESSAGES, extra_headers=RID
        )
    assert caught.value.status_code == 502 and caught.value.code == "upstream_error"
    assert "500" in caught.value.message and "[redacted]" in caught.value.message
    record = record_of("req-fault")
    assert (record.outcome, record.status_code) == ("upstream_error", 502) and released(allocation)


def test_an_upstream_that_hangs_is_a_504(world):  # past the server's GATEWAY_UPSTREAM_TIMEOUT_S
    allocation = world.allocation(upstream_name="fake-hang")
    with pytest.raises(openai.APIStatusError) as caught:
        world.client(allocation.plaintext).chat.completions.create(
            model=allocation.model.slug, messages=MESSAGES, extra_headers=RID
        )
    assert caught.value.status_code == 504 and caught.value.code == "upstream_timeout"
    assert record_of("req-fault").outcome == "upstream_error" and released(allocation)


def test_an_unreachable_upstream_is_a_502(world):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    allocation = world.allocation(provider=world.provider(base_url=f"http://127.0.0.1:{port}/v1"))
    with pytest.raises(openai.APIStatusError) as caught:
        world.client(allocation.plaintext).chat.completions.create(
            model=allocation.model.slug, messages=MESSAGES, extra_headers=RID
        )
    assert caught.value.status_code == 502 and str(port) not in caught.value.message
    assert record_of("req-fault").outcome == "upstream_error" and released(allocation)


def test_a_non_json_answer_is_a_502_billed_on_the_prompt_estimate(world):
    allocation = world.allocation(upstream_name="fake-garbage")
    with pytest.raises(openai.APIStatusError) as caught:
        world.client(allocation.plaintext).chat.completions.create(
            model=allocation.model.slug, messages=MESSAGES, extra_headers=RID
        )
    assert caught.value.status_code == 502
    record = record_of("req-fault")
    assert (record.outcome, record.estimated, record.output_tokens) == ("upstream_error", True, 0)
    assert record.input_tokens > 0 and counter_of(allocation).tokens_used == record.input_tokens


def test_a_malformed_stream_is_relayed_and_recorded_as_an_upstream_error_on_an_estimate(world):
    allocation = world.allocation(upstream_name="fake-garbage")
    stream = world.client(allocation.plaintext).chat.completions.create(
        model=allocation.model.slug, messages=MESSAGES, stream=True, extra_headers=RID
    )
    with pytest.raises(ValueError):  # the SDK cannot parse the broken event either
        list(stream)
    record = record_of("req-fault")
    assert (record.outcome, record.estimated, record.is_stream) == ("upstream_error", True, True)
    assert "malformed" in record.error_message
    assert record.output_tokens == 5  # "Hello from the fake" relayed before the garbage: 19 chars
    assert counter_of(allocation).tokens_used == record.total_tokens and released(allocation)


def test_a_client_that_leaves_on_a_malformed_event_leaves_an_upstream_error_not_a_cancelled_call(world):
    """The upstream's stream was found malformed before its client left (because of it): the call
    is the upstream's failure, whichever of the two the gateway notices first."""
    allocation = world.allocation(upstream_name="fake-garbage-stall")
    stream = world.client(allocation.plaintext).chat.completions.create(
        model=allocation.model.slug, messages=MESSAGES, stream=True, extra_headers=RID
    )
    try:
        with pytest.raises(ValueError):  # the broken event; the upstream then falls silent
            list(stream)
    finally:
        stream.close()  # the client gives up on the stream
    record = record_of("req-fault")
    assert (record.outcome, record.status_code, record.estimated) == ("upstream_error", 200, True)
    assert "malformed" in record.error_message
    assert record.output_tokens == 5 and counter_of(allocation).tokens_used == record.total_tokens
    assert released(allocation)


def test_an_upstream_that_drops_mid_stream_ends_the_stream_with_an_error_billed_on_the_deltas(world):
    allocation = world.allocation(upstream_name="fake-drop-3", cost=Decimal("1"))
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in world.client(allocation.plaintext).chat.completions.create(
            model=allocation.model.slug, messages=MESSAGES, stream=True, extra_headers=RID
        ):
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "Hello from the" and "mid-stream" in caught.value.message
    record = record_of("req-fault")
    assert (record.outcome, record.estimated, record.status_code) == ("upstream_error", True, 200)
    assert record.output_tokens == 4  # 14 relayed characters / 4, rounded up
    assert record.cost_usd > 0 and counter_of(allocation).cost_used == record.cost_usd and released(allocation)


def test_a_stream_that_falls_silent_ends_with_an_error_after_the_read_timeout(world):
    allocation = world.allocation(upstream_name="fake-stall-2", cost=Decimal("1"))
    received, started = [], time.monotonic()
    with pytest.raises(openai.APIError) as caught:
        for chunk in world.client(allocation.plaintext, timeout=30).chat.completions.create(
            model=allocation.model.slug, messages=MESSAGES, stream=True, extra_headers=RID
        ):
            received.append(chunk.choices[0].delta.content or "")
    waited = time.monotonic() - started
    assert "".join(received) == "Hello from" and "stopped answering" in caught.value.message
    assert 1.5 <= waited < 6, waited  # GATEWAY_UPSTREAM_TIMEOUT_S (SERVE_ENV), at most a tenth late
    record = record_of("req-fault")
    assert (record.outcome, record.estimated, record.error_code) == ("upstream_error", True, "upstream_timeout")
    assert record.cost_usd > 0 and counter_of(allocation).cost_used == record.cost_usd and released(allocation)


def test_a_stream_longer_than_the_read_timeout_but_never_silent_that_long_completes(world):
    allocation = world.allocation(upstream_name="fake-pace-600")  # 4 chunks 0.6 s apart: 2.4 s > 1.5 s
    chunks = list(
        world.client(allocation.plaintext, timeout=30).chat.completions.create(
            model=allocation.model.slug, messages=MESSAGES, stream=True, extra_headers=RID,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the fake"
    assert chunks[-1].usage is not None
    record = record_of("req-fault")
    assert (record.outcome, record.estimated) == ("success", False) and released(allocation)


def test_a_stream_that_ends_without_usage_is_billed_on_an_estimate(world):
    allocation = world.allocation(upstream_name="fake-nousage")
    chunks = list(
        world.client(allocation.plaintext).chat.completions.create(
            model=allocation.model.slug, messages=MESSAGES, stream=True, extra_headers=RID
        )
    )
    assert chunks
    record = record_of("req-fault")
    assert (record.outcome, record.estimated, record.output_tokens) == ("upstream_error", True, 5)
    assert "without usage" in record.error_message and released(allocation)


def test_a_client_closing_mid_stream_cancels_upstream_and_is_billed_for_what_was_relayed(world):
    allocation = world.allocation(upstream_name="fake-trickle", cost=Decimal("1"))
    body = {"model": allocation.model.slug, "messages": MESSAGES, "stream": True}
    headers = {"Authorization": f"Bearer {allocation.plaintext}", **RID}
    with httpx.stream(
        "POST", f"{world.gateway_url}/v1/chat/completions", json=body, headers=headers, timeout=10
    ) as response:
        seen = b""
        for piece in response.iter_bytes():
            seen += piece
            if seen.count(b"data: ") >= 2:
                break  # leaving the block closes the connection mid-stream
    record = record_of("req-fault")
    assert (record.outcome, record.status_code, record.estimated) == ("client_cancelled", 499, True)
    assert record.output_tokens <= 4 and counter_of(allocation).tokens_used == record.total_tokens
    assert released(allocation) and CallRecord.objects.count() == 1


def test_a_non_streaming_call_whose_client_leaves_is_completed_upstream_and_billed(world, fake_upstream):
    """The client leaves once the upstream has the call, while it is still answering (1 s): not
    on a timer of its own, which a busy machine can run out before the gateway has even admitted
    the call (then nothing went upstream to complete)."""
    allocation = world.allocation(upstream_name="fake-sleep-1000", cost=Decimal("1"))
    body = json.dumps({"model": allocation.model.slug, "messages": MESSAGES}).encode()
    url = httpx.URL(world.gateway_url)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {url.host}:{url.port}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {allocation.plaintext}\r\nX-Request-Id: {RID['X-Request-Id']}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection((url.host, url.port), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        deadline = time.monotonic() + 10
        while not fake_upstream.requests:
            assert time.monotonic() < deadline, "the call never reached the upstream"
            time.sleep(0.01)
    record = record_of("req-fault")
    assert (record.outcome, record.input_tokens, record.output_tokens) == ("client_cancelled", 11, 7)
    assert not record.estimated and counter_of(allocation).tokens_used == 18
    time.sleep(0.1)
    assert released(allocation) and CallRecord.objects.count() == 1


def test_a_base_url_the_client_cannot_parse_is_a_502(world):
    allocation = world.allocation(provider=world.provider(base_url="http://127.0.0.1:99999/v1"))
    with pytest.raises(openai.APIStatusError) as caught:
        world.client(allocation.plaintext).chat.completions.create(
            model=allocation.model.slug, messages=MESSAGES, extra_headers=RID
        )
    assert caught.value.status_code == 502 and caught.value.code == "upstream_error"
    assert "99999" not in caught.value.message
    assert record_of("req-fault").outcome == "upstream_error" and released(allocation)
