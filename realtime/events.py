"""The model names a client's session events carry: the one a first `session.update` names, the
check that later ones name no other, and the rewrite to the upstream name (the only change the
relay ever makes to a relayed frame); and the error event for a client event not forwarded."""

import json

from .meter import dict_at


def model_in_session_update(event: dict) -> str:
    """The model a first `session.update` names: the session model, else its transcription model."""
    session = dict_at(event, "session")
    if isinstance(session.get("model"), str):
        return session["model"]
    audio = dict_at(session, "audio")
    audio_in = dict_at(audio, "input")
    for tr in (audio_in.get("transcription"), session.get("input_audio_transcription")):
        if isinstance(tr, dict) and isinstance(tr.get("model"), str):
            return tr["model"]
    return ""


def _model_holders(event: dict) -> list[dict]:
    """The objects of a session.update that name a model: the session itself, its transcription
    settings (`input_audio_transcription`) and the GA form's `audio.input.transcription`."""
    session = event.get("session")
    if not isinstance(session, dict):
        return []
    holders = [session, session.get("input_audio_transcription")]
    audio = session.get("audio")
    if isinstance(audio, dict) and isinstance(audio.get("input"), dict):
        holders.append(audio["input"].get("transcription"))
    return [holder for holder in holders if isinstance(holder, dict) and "model" in holder]


def foreign_model(event: dict, own: frozenset[str]) -> str | None:
    """The first model a session.update names that is not the session's own (as `own` names it),
    else None: a session bills one allocation's model, so it never switches to another upstream."""
    for holder in _model_holders(event):
        if holder["model"] not in own:
            return str(holder["model"])
    return None


def rewrite_model(event: dict, own: frozenset[str], upstream: str) -> bool:
    """Replaces the session's model, however the client named it, by the upstream name wherever a
    session.update names it; True when the event changed."""
    changed = False
    for holder in _model_holders(event):
        if holder["model"] in own and holder["model"] != upstream:
            holder["model"] = upstream
            changed = True
    return changed


def error_event(*, type_: str, code: str, message: str, event_id: object, param: str | None = None) -> str:
    """An `error` server event for a client event the gateway did not forward."""
    error = {"type": type_, "code": code, "message": message, "param": param, "event_id": event_id}
    return json.dumps({"type": "error", "error": error})
