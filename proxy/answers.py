"""A /v1 answer read whole, metered: each endpoint's answer meter (declared in proxy.registry)
turns the upstream's status and body into what the call is recorded and billed with and what the
client receives. `meter_usage`: answers that carry a `usage` object (chat, Responses, embeddings);
`meter_media`: answers metered by the request and the answer themselves (images, transcription,
moderation, rerank, OCR). Streams are relayed by proxy.views (proxy.relay's events, or audio
chunks); nothing here writes: proxy.views settles and answers.
"""

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from allocations.exceptions import GatewayError
from lib.frozen import quick_init
from quota import options
from quota.exceptions import UpstreamError
from quota.models import Outcome
from quota.pricing import Usage

from . import meters, transcripts

if TYPE_CHECKING:
    from .accounting import Call


@quick_init
@dataclass(frozen=True)
class Answer:
    """A metered answer: the record's outcome, status and usage, and the client's response."""

    outcome: str
    status: int
    usage: Usage
    body: bytes = b""
    content_type: str = ""
    error: GatewayError | None = None  # answered in the error envelope instead of `body`
    response_id: object = None  # a Responses answer's id (remembered for its member)


def _failed(error: GatewayError, usage: Usage) -> Answer:
    return Answer(Outcome.UPSTREAM_ERROR, error.status, usage, error=error)


def meter_usage(call: "Call", status: int, content_type: str, raw: bytes) -> Answer:
    """From the answer's `usage` (read whole when its tier or tool calls may cost more); a valid
    answer without one (some OpenAI-compatible servers) is billed on an estimate."""
    endpoint = call.endpoint
    whole = options.answer_read_whole(endpoint.name, call.outgoing, call.price)
    answer = meters.read_answer(raw, answer_meter=endpoint.answer_meter if whole else None, usage_meter=endpoint.meter)
    outcome = Outcome.CLIENT_CANCELLED if call.client_gone else Outcome.SUCCESS
    prompt_tokens = call.plan.estimate.input_tokens
    if answer.usage is not None:
        return Answer(outcome, status, answer.usage, raw, content_type, response_id=answer.id)
    if not answer.is_json:
        error = UpstreamError("the upstream answered with a body that is not JSON")
        return _failed(error, Usage(input_tokens=prompt_tokens, estimated=True))
    usage = dataclasses.replace(
        answer.extras, input_tokens=prompt_tokens, output_tokens=meters.tokens_for_text(len(raw)), estimated=True
    )
    return Answer(outcome, status, usage, raw, content_type, response_id=answer.id)


def meter_media(call: "Call", status: int, content_type: str, raw: bytes) -> Answer:
    """By the endpoint's response meter; an answer it cannot read is billed at the reservation's
    estimate (the upstream may well have charged), flagged as such. A transcription asked in a
    format the provider does not bill by is converted back to it."""
    meter, body = call.endpoint.response_meter, call.plan.body
    if meter is None or body is None:  # the registry gives media endpoints a meter; admission a body
        raise RuntimeError(f"{call.endpoint.name}: no response meter or request body to meter")
    try:
        usage = meter(body, raw)
    except ValueError as exc:
        error = UpstreamError(f"the upstream answered with a body the gateway cannot meter ({exc})")
        return _failed(error, dataclasses.replace(call.endpoint.estimate(body), estimated=True))
    outcome = Outcome.CLIENT_CANCELLED if call.client_gone else Outcome.SUCCESS
    client_format = call.sent.client_format if call.sent is not None else None
    if client_format is not None and 200 <= status < 300:
        converted = transcripts.for_client(client_format, raw)
        if converted is not None:
            raw, content_type = converted
    return Answer(outcome, status, usage, raw, content_type)
