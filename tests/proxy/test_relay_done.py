"""The chat relay holds a stream's closing `data: [DONE]` back for the view to send after the
call's settlement, wherever the upstream's chunks cut the events, and never reorders events."""

from proxy import meters, relay

USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n'
WORD = b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
DONE = b"data: [DONE]\n\n"


def chat_relay() -> relay.ChatRelay:
    return relay.ChatRelay(meters.ChatStreamMeter(3), strip_usage=False)


def relayed(chunks: list[bytes]) -> tuple[bytes, bytes]:
    """(what `feed` and `rest` sent, then what `held` gives after the stream's end)."""
    handler = chat_relay()
    sent = b"".join(handler.feed(chunk) for chunk in chunks) + handler.rest()
    return sent, handler.held()


def test_the_done_event_is_held_whether_it_shares_a_chunk_or_not():
    for chunks in ([WORD, USAGE, DONE], [WORD + USAGE + DONE], [WORD, USAGE + DONE[:7], DONE[7:]]):
        sent, held = relayed(chunks)
        assert (sent, held) == (WORD + USAGE, DONE), chunks


def test_a_done_without_its_blank_line_at_the_end_is_held_too():
    handler = chat_relay()
    assert handler.feed(WORD + b"data:[DONE]") == WORD
    assert handler.rest() == b"" and handler.held() == b"data:[DONE]\n\n"


def test_events_after_a_done_follow_it_in_the_upstreams_order():
    sent, held = relayed([WORD + DONE, WORD, b"data: late"])
    assert (sent, held) == (WORD + DONE + WORD + b"data: late\n\n", b"")


def test_an_event_that_only_ends_with_the_letters_is_not_held():
    tail = b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]} [DONE]\n\n'
    assert relayed([WORD + tail]) == (WORD + tail, b"")


def test_the_usage_is_still_read_when_done_shares_its_chunk():
    handler = chat_relay()
    handler.feed(USAGE + DONE)
    assert handler.meter.usage is not None and handler.meter.usage.total_tokens == 5
