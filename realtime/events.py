"""The model names a client's session events carry: the one a first `session.update` names, and
its rewrite to the upstream name (the only change the relay ever makes to a relayed frame)."""

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


def rewrite_model(event: dict, name: str, upstream: str) -> bool:
    """Replaces the client's model name by the upstream one wherever a session.update names it."""
    session = event.get("session")
    if not isinstance(session, dict):
        return False
    changed = False
    holders = [session, session.get("input_audio_transcription")]
    audio = session.get("audio")
    if isinstance(audio, dict) and isinstance(audio.get("input"), dict):
        holders.append(audio["input"].get("transcription"))
    for holder in holders:
        if isinstance(holder, dict) and holder.get("model") == name:
            holder["model"] = upstream
            changed = True
    return changed
