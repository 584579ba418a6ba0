"""The /v1 endpoints as data. Adding an endpoint (images, audio, moderation, rerank, OCR)
means adding one entry here, a meter in proxy.meters and, for the simulated provider, a handler
in proxy.simulated; the one relay view (proxy.views), the admission (quota.admission) and the
upstream adapters are shared. What differs per endpoint is a hook named here: its body reader and
upstream builder (proxy.bodies), its answer meter (proxy.answers) and its stream relay (proxy.relay).
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.http import HttpRequest

from allocations.models import ModelKind
from quota.pricing import Usage

from . import answers, bodies, media_meters, meters, relay

if TYPE_CHECKING:
    from .accounting import Call

# How the request body is read and forwarded.
BODY_JSON = "json"
BODY_MULTIPART = "multipart"  # parse the form for `model`, forward the parts
# How the answer is relayed.
RESPONSE_JSON = "json"
RESPONSE_BINARY = "binary"  # audio/speech


@dataclass(frozen=True)
class Endpoint:
    name: str  # CallRecord.endpoint, e.g. "chat.completions"
    path: str  # below /v1/ on the gateway and below the provider's base URL upstream
    required: tuple[str, ...]  # fields a request must carry (step 2 of the preflight)
    kinds: frozenset[str]  # model kinds it serves (step 9)
    meter: Callable[[dict], Usage]  # the upstream's `usage` object -> Usage
    estimate: Callable[[dict], Usage]  # request -> reserved tokens (priced with the price in force)
    body: str = BODY_JSON
    response: str = RESPONSE_JSON
    stream_meter: type[meters.StreamMeter] | None = None  # None: `stream: true` is refused
    # The whole answer -> Usage (its service tier and tool calls beside its usage): chat, responses.
    answer_meter: Callable[[dict], Usage] | None = None
    force_stream_usage: bool = False  # chat: stream_options.include_usage forced on upstream
    # (request, raw answer) -> Usage, for answers whose meter is not a `usage` object (images,
    # audio, moderation, rerank, OCR); `files`: required multipart files.
    response_meter: Callable[[dict, bytes], Usage] | None = None
    files: tuple[str, ...] = ()
    # The upload is audio billed by its duration: read it (proxy.audio), and ask the provider for a
    # format that reports what it bills (proxy.transcripts).
    audio: bool = False
    text_input: bool = False  # `input` must be a string (speech)
    # The hooks: how the body is read, how the upstream request is built, how a whole answer is
    # metered, and which relay turns a stream's events (None: no stream).
    reader: Callable[[HttpRequest, "Endpoint"], Awaitable[bodies.Read]] = bodies.read_json
    builder: Callable[["Call"], bodies.Outgoing] = bodies.build_json
    answer: Callable[["Call", int, str, bytes], answers.Answer] = answers.meter_usage
    stream_relay: Callable[[meters.StreamMeter, bool], relay.ChatRelay | relay.ResponsesRelay] | None = None
    # Responses: ids are remembered per member, a foreign `previous_response_id` is refused, and
    # a background response whose client left is read to its end (and billed).
    response_ids: bool = False


def _chat_relay(meter: meters.StreamMeter, strip_usage: bool) -> relay.ChatRelay:
    return relay.ChatRelay(meter, strip_usage=strip_usage)


def _responses_relay(meter: meters.StreamMeter, strip_usage: bool) -> relay.ResponsesRelay:
    return relay.ResponsesRelay(meter)


ENDPOINTS: dict[str, Endpoint] = {
    e.name: e
    for e in (
        Endpoint(
            name="chat.completions",
            path="chat/completions",
            required=("model", "messages"),
            # Image models with chat output (gemini-2.5-flash-image, OpenRouter's image
            # models) are called on chat too; one allocation, one cost cap for both endpoints.
            kinds=frozenset({ModelKind.CHAT, ModelKind.IMAGE}),
            meter=meters.chat_usage,
            estimate=meters.estimate_chat,
            stream_meter=meters.ChatStreamMeter,
            answer_meter=meters.chat_answer,
            force_stream_usage=True,
            stream_relay=_chat_relay,
        ),
        Endpoint(
            name="responses",
            path="responses",
            required=("model", "input"),
            kinds=frozenset({ModelKind.CHAT}),
            meter=meters.responses_usage,
            estimate=meters.estimate_responses,
            stream_meter=meters.ResponsesStreamMeter,
            answer_meter=meters.responses_answer,
            stream_relay=_responses_relay,
            response_ids=True,
        ),
        Endpoint(
            name="embeddings",
            path="embeddings",
            required=("model", "input"),
            kinds=frozenset({ModelKind.EMBEDDING}),
            meter=meters.embeddings_usage,
            estimate=meters.estimate_embeddings,
        ),
        # The non-token endpoints (docs/ENDPOINTS.md).
        Endpoint(
            name="images.generations",
            path="images/generations",
            required=("model", "prompt"),
            kinds=frozenset({ModelKind.IMAGE}),
            meter=meters.chat_usage,
            estimate=media_meters.estimate_images,
            reader=bodies.read_media_json,
            answer=answers.meter_media,
            response_meter=media_meters.images_usage,
        ),
        Endpoint(
            name="images.edits",
            path="images/edits",
            required=("model", "prompt"),
            kinds=frozenset({ModelKind.IMAGE}),
            meter=meters.chat_usage,
            estimate=media_meters.estimate_images,
            body=BODY_MULTIPART,
            reader=bodies.read_form,
            builder=bodies.build_form,
            answer=answers.meter_media,
            response_meter=media_meters.images_usage,
            files=("image",),
        ),
        Endpoint(
            name="audio.speech",
            path="audio/speech",
            required=("model", "input"),
            kinds=frozenset({ModelKind.TTS}),
            meter=meters.chat_usage,
            estimate=media_meters.estimate_speech,
            response=RESPONSE_BINARY,
            reader=bodies.read_media_json,
            answer=answers.meter_media,
            text_input=True,
            response_meter=media_meters.speech_usage,
        ),
        Endpoint(
            name="audio.transcriptions",
            path="audio/transcriptions",
            required=("model",),
            kinds=frozenset({ModelKind.STT}),
            meter=meters.chat_usage,
            estimate=media_meters.estimate_transcription,
            body=BODY_MULTIPART,
            reader=bodies.read_form,
            builder=bodies.build_form,
            answer=answers.meter_media,
            response_meter=media_meters.transcription_usage,
            files=("file",),
            audio=True,
        ),
        Endpoint(
            name="moderations",
            path="moderations",
            required=("model", "input"),
            kinds=frozenset({ModelKind.MODERATION}),
            meter=meters.chat_usage,
            estimate=media_meters.estimate_moderation,
            reader=bodies.read_media_json,
            answer=answers.meter_media,
            response_meter=media_meters.moderation_usage,
        ),
        Endpoint(
            name="rerank",
            path="rerank",
            required=("model", "query", "documents"),
            kinds=frozenset({ModelKind.RERANK}),
            meter=meters.chat_usage,
            estimate=media_meters.estimate_rerank,
            reader=bodies.read_media_json,
            answer=answers.meter_media,
            response_meter=media_meters.rerank_usage,
        ),
        Endpoint(
            name="ocr",
            path="ocr",
            required=("model", "document"),
            kinds=frozenset({ModelKind.OCR}),
            meter=meters.chat_usage,
            estimate=media_meters.estimate_ocr,
            reader=bodies.read_media_json,
            answer=answers.meter_media,
            response_meter=media_meters.ocr_usage,
        ),
    )
}


_SPOOLED = frozenset("/v1/" + e.path for e in ENDPOINTS.values() if e.body == BODY_MULTIPART)


def spools(path: str) -> bool:
    """Whether proxy.handler spools this path's body (the multipart endpoints)."""
    return path.rstrip("/") in _SPOOLED
