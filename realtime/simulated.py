"""The built-in simulated realtime provider (kind `simulated`): in-process, deterministic, no network.

It speaks a small subset of the OpenAI Realtime protocol: `session.created` on open;
`session.update` → `session.updated`; `input_audio_buffer.append/commit/clear`;
`conversation.item.create`; `response.create` → `response.created`, one `response.text.delta`,
`response.done` with usage; transcription sessions (`intent=transcription` or a session that
declares a transcription model) get `conversation.item.input_audio_transcription.completed` with
token usage on each commit. Usage: ~4 characters per text token, 10 audio tokens per second of
24 kHz pcm16 (4800 bytes per token).
"""

import asyncio
import json
from typing import Any

from .meter import b64_decoded_len, dict_at
from .upstream import UpstreamClosed

REPLY = "This is the simulated realtime provider."
TRANSCRIPT = "Simulated transcript."
BYTES_PER_AUDIO_TOKEN = 4800


def _tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4) if text else 0


class SimulatedLink:
    def __init__(self, *, model: str, intent: str = "") -> None:
        self.model = model
        self.transcription = model if intent == "transcription" else None
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.seq = self.items = self.audio = self.committed = self.text_in = 0
        self.closed: UpstreamClosed | None = None
        self._emit("session.created", session=self._session())

    # --- link interface --------------------------------------------------------------------

    async def send(self, data: str | bytes) -> None:
        if self.closed:
            raise self.closed
        try:
            event = json.loads(data)
            kind = event.get("type")
        except (ValueError, AttributeError):
            self._emit("error", error={"type": "invalid_request_error", "code": "invalid_json", "message": "bad JSON"})
            return
        handler = getattr(self, "_on_" + str(kind).replace(".", "_"), None)
        if handler is None:
            self._emit("error", error={"type": "invalid_request_error", "code": "unknown_event", "message": kind})
            return
        handler(event)

    async def recv(self) -> str | bytes:
        item = await self.outbox.get()
        if isinstance(item, UpstreamClosed):
            self.closed = item
            raise item
        return item

    async def close(self, code: int = 1000) -> None:
        if not self.closed:
            self.closed = UpstreamClosed(code)
            self.outbox.put_nowait(self.closed)

    # --- protocol --------------------------------------------------------------------------

    def _emit(self, kind: str, **fields: Any) -> None:
        self.seq += 1
        self.outbox.put_nowait(json.dumps({"type": kind, "event_id": f"event_sim_{self.seq}", **fields}))

    def _session(self) -> dict:
        transcription = {"model": self.transcription} if self.transcription else None
        return {
            "id": "sess_sim",
            "object": "realtime.session",
            "model": self.model,
            "modalities": ["text"],
            "input_audio_format": "pcm16",
            "input_audio_transcription": transcription,
        }

    def _on_session_update(self, event: dict) -> None:
        session = dict_at(event, "session")
        tr = session.get("input_audio_transcription")
        audio = session.get("audio")
        if isinstance(audio, dict) and isinstance(audio.get("input"), dict):
            tr = audio["input"].get("transcription", tr)
        if isinstance(tr, dict):
            self.transcription = tr.get("model") or self.model
        self._emit(event["type"].removesuffix("update") + "updated", session=self._session())

    _on_transcription_session_update = _on_session_update

    def _on_input_audio_buffer_append(self, event: dict) -> None:
        audio = event.get("audio")
        self.audio += b64_decoded_len(audio) if isinstance(audio, str) else 0

    def _on_input_audio_buffer_clear(self, event: dict) -> None:
        self.audio = 0
        self._emit("input_audio_buffer.cleared")

    def _on_input_audio_buffer_commit(self, event: dict) -> None:
        nbytes, self.audio = self.audio, 0
        self.committed += nbytes
        self.items += 1
        item_id = f"item_sim_{self.items}"
        self._emit("input_audio_buffer.committed", previous_item_id=None, item_id=item_id)
        if self.transcription:
            audio_tokens, out = nbytes // BYTES_PER_AUDIO_TOKEN, _tokens(TRANSCRIPT)
            usage = {
                "type": "tokens",
                "input_tokens": audio_tokens,
                "output_tokens": out,
                "total_tokens": audio_tokens + out,
                "input_token_details": {"audio_tokens": audio_tokens},
            }
            self._emit(
                "conversation.item.input_audio_transcription.completed",
                item_id=item_id,
                content_index=0,
                transcript=TRANSCRIPT,
                usage=usage,
            )

    def _on_conversation_item_create(self, event: dict) -> None:
        item = dict_at(event, "item")
        for part in item.get("content") or []:
            if isinstance(part, dict):
                self.text_in += _tokens(str(part.get("text") or ""))
        self.items += 1
        self._emit("conversation.item.created", previous_item_id=None, item={**item, "id": f"item_sim_{self.items}"})

    def _on_response_create(self, event: dict) -> None:
        self.items += 1
        rid, item_id = f"resp_sim_{self.items}", f"item_sim_{self.items}_out"
        audio_tokens = (self.committed + self.audio) // BYTES_PER_AUDIO_TOKEN
        text_tokens, out = self.text_in + 5, _tokens(REPLY)
        usage = {
            "total_tokens": text_tokens + audio_tokens + out,
            "input_tokens": text_tokens + audio_tokens,
            "output_tokens": out,
            "input_token_details": {"text_tokens": text_tokens, "audio_tokens": audio_tokens, "cached_tokens": 0},
            "output_token_details": {"text_tokens": out, "audio_tokens": 0},
        }
        base = {"object": "realtime.response", "id": rid, "status_details": None}
        self._emit("response.created", response={**base, "status": "in_progress", "output": [], "usage": None})
        self._emit(
            "response.text.delta", response_id=rid, item_id=item_id, output_index=0, content_index=0, delta=REPLY
        )
        output = [{"id": item_id, "type": "message", "role": "assistant", "content": [{"type": "text", "text": REPLY}]}]
        self._emit("response.done", response={**base, "status": "completed", "output": output, "usage": usage})
        self.committed = self.audio = self.text_in = 0

    def _on_response_cancel(self, event: dict) -> None:
        """Responses complete at once here, so there is never one to cancel."""
