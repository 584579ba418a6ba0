"""Hostile /v1 bodies: a multipart form that would smuggle a second model past the rewrite, JSON
nested past the parser's recursion limit, and fuzzing that proves no body is answered with a 500."""

import io
import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from allocations.models import ModelKind
from proxy import bodies, multipart
from proxy.registry import ENDPOINTS

from .media_fixtures import *  # noqa: F403 - the media and media_upstream fixtures
from .media_upstream import wav_bytes

BOUNDARY = "gw-hostile"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def raw_form(*parts: tuple[bytes, bytes]) -> bytes:
    """Parts as (header block, content), headers exactly as given."""
    out = b""
    for headers, content in parts:
        out += f"--{BOUNDARY}\r\n".encode() + headers + b"\r\n\r\n" + content + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def disposition(name: str, filename: str | None = None) -> bytes:
    return f'Content-Disposition: form-data; name="{name}"'.encode() + (
        f'; filename="{filename}"'.encode() if filename else b""
    )


def parse(raw: bytes) -> multipart.Form:
    return multipart.parse_form(io.BytesIO(raw), CONTENT_TYPE)


# --- multipart: the part's name comes from its Content-Disposition, and only one model ----------------


def test_a_decoy_header_does_not_name_a_part():
    form = parse(raw_form((b'X-Decoy: x; name="prompt"\r\n' + disposition("model"), b"sim/whisper")))
    assert [p.name for p in form.parts] == ["model"]
    assert form.fields() == {"model": "sim/whisper"}


@pytest.mark.parametrize(
    "parts",
    [
        # the smuggled model: the gateway would have read "prompt" from the decoy and not rewritten it
        [(disposition("model"), b"cheap"), (b'X-Decoy: ; name="prompt"\r\n' + disposition("model"), b"gpt-4o")],
        [(disposition("model"), b"cheap"), (disposition("model"), b"gpt-4o")],
        [(disposition("model"), b"cheap"), (disposition("Model"), b"gpt-4o")],
        [(disposition("model", "m.txt"), b"gpt-4o")],
        [(b'Content-Disposition: form-data; name="prompt"; name="model"', b"gpt-4o")],
        [(b"Content-Disposition: form-data; name=\"prompt\"; name*=utf-8''model", b"gpt-4o")],
        [(disposition("prompt") + b"\r\n" + disposition("model"), b"gpt-4o")],
        [(b'Content-Disposition: form-data;\r\n name="model"', b"gpt-4o")],  # folded line
        [(b'Content-Disposition: form-data; name="prompt"\nContent-Disposition: form-data; name="model"', b"x")],
        [(b'Content-Disposition: attachment; name="model"', b"gpt-4o")],
        [(b'X-Only: name="model"', b"gpt-4o")],
        [(disposition("file", "a.wav") + b'; filename="b.wav"', b"RIFF")],
    ],
)
def test_an_ambiguous_part_or_a_second_model_part_is_refused(parts):
    with pytest.raises(ValueError):
        parse(raw_form(*parts))


def test_rfc_2231_and_utf_8_names_are_read_as_the_standard_library_reads_them():
    form = parse(
        raw_form(
            (b"Content-Disposition: form-data; name*=utf-8''mod%65l", b"sim/whisper"),
            ('Content-Disposition: form-data; name="file"; filename="é.wav"'.encode(), b"RIFF"),
        )
    )
    assert form.fields() == {"model": "sim/whisper"} and form.file("file").filename == "é.wav"


def test_a_smuggled_model_part_is_refused_with_400_before_anything_reaches_the_upstream(media):
    allocation = media.allocation("whisper-1", ModelKind.STT, unit="minute", per_unit="0.006")
    body = raw_form(
        (disposition("model"), allocation.model.slug.encode()),
        (b'X-Decoy: ; name="language"\r\n' + disposition("model"), b"gpt-4o-transcribe"),
        (disposition("file", "a.wav") + b"\r\nContent-Type: audio/wav", wav_bytes(1)),
    )
    response = httpx.post(
        f"{media.world.gateway_url}/v1/audio/transcriptions",
        content=body,
        headers={"Authorization": f"Bearer {allocation.plaintext}", "Content-Type": CONTENT_TYPE},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "bad_request"
    assert "model" in response.json()["error"]["message"]
    assert media.upstream.requests == []


# --- JSON nested past any sane depth --------------------------------------------------------------


def post(world, allocation, path: str, content: bytes, content_type="application/json") -> httpx.Response:
    headers = {"Authorization": f"Bearer {allocation.plaintext}", "Content-Type": content_type}
    return httpx.post(f"{world.gateway_url}/v1/{path}", content=content, headers=headers, timeout=30)


def nested(depth: int, opener: str = "[", closer: str = "]") -> str:
    return opener * depth + ("" if opener == "[" else "1") + closer * depth


@pytest.mark.parametrize("depth", [bodies.MAX_JSON_DEPTH + 1, 990, 1000, 100_000])
@pytest.mark.parametrize(("opener", "closer"), [("[", "]"), ('{"a":', "}")])
def test_json_nested_deeper_than_the_limit_is_a_400_not_a_500(world, depth, opener, closer):
    allocation = world.allocation()
    deep = nested(depth, opener, closer)
    body = f'{{"model": "{allocation.model.slug}", "messages": [], "metadata": {deep}}}'
    response = post(world, allocation, "chat/completions", body.encode())
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "bad_request"
    assert "nested" in response.json()["error"]["message"]


def test_json_nested_up_to_the_limit_is_relayed(world):
    allocation = world.allocation()
    deep = nested(bodies.MAX_JSON_DEPTH - 2)  # inside the body object and its `metadata` key
    body = (
        f'{{"model": "{allocation.model.slug}", "messages": [{{"role": "user", "content": "hi"}}], "metadata": {deep}}}'
    )
    response = post(world, allocation, "chat/completions", body.encode())
    assert response.status_code == 200, response.text


# --- fuzzing: no body, however hostile, is answered with a 500 ---------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
field_names = st.sampled_from(
    [
        "model",
        "messages",
        "input",
        "prompt",
        "stream",
        "n",
        "query",
        "documents",
        "document",
        "stream_options",
        "max_tokens",
        "tools",
    ]
    + ["previous_response_id", "service_tier", "background"]
)
json_bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(field_names, json_values, max_size=6).map(lambda v: json.dumps(v).encode()),
    st.integers(1, 3000).map(lambda d: nested(d).encode()),
)
JSON_PATHS = sorted(e.path for e in ENDPOINTS.values() if e.body != "multipart")


class FakeRequest:
    def __init__(self, body: bytes):
        self.body = body


@settings(max_examples=600, deadline=None)
@given(raw=json_bodies, endpoint=st.sampled_from(sorted(ENDPOINTS)))
def test_the_json_parser_answers_every_body_with_a_verdict_never_an_exception(raw, endpoint):
    body, error = bodies.parse_body(FakeRequest(raw), ENDPOINTS[endpoint])
    assert error is not None or isinstance(body, dict)
    if error is None:
        json.dumps(body)  # what upstream_payload does with it


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=json_bodies, path=st.sampled_from(JSON_PATHS), use_model=st.booleans())
def test_no_json_body_gets_a_500_from_the_gateway(world, raw, path, use_model):
    allocation = getattr(world, "fuzz_allocation", None) or world.allocation()
    world.fuzz_allocation = allocation
    if use_model and raw.startswith(b"{") and raw.endswith(b"}"):
        raw = b'{"model": "%s", ' % allocation.model.slug.encode() + raw[1:] if raw != b"{}" else raw
    response = post(world, allocation, path, raw)
    assert response.status_code != 500, response.text
    if response.status_code >= 400:
        assert "code" in response.json()["error"]


part_headers = st.one_of(
    st.sampled_from(
        [
            b'Content-Disposition: form-data; name="model"',
            b'Content-Disposition: form-data; name="file"; filename="a.wav"',
            b'Content-Disposition: form-data; name="language"',
            b"",
            b"Content-Disposition: form-data; name*=utf-8''%FF%FE",
            b'X: ; name="model"',
        ]
    ),  # fmt: skip
    st.binary(max_size=80),
    st.lists(st.binary(max_size=30), max_size=3).map(b"\r\n".join),
)
forms = st.lists(st.tuples(part_headers, st.binary(max_size=60)), max_size=5).map(lambda parts: raw_form(*parts))
multipart_bodies = st.one_of(forms, st.binary(max_size=300), forms.map(lambda f: f[: len(f) // 2]))


@settings(max_examples=600, deadline=None)
@given(raw=multipart_bodies, content_type=st.sampled_from([CONTENT_TYPE, "multipart/form-data", "text/plain",
                                                           'multipart/form-data; boundary="gw-hostile"']))  # fmt: skip
def test_the_multipart_parser_refuses_or_parses_every_form_never_an_exception(raw, content_type):
    try:
        form = multipart.parse_form(io.BytesIO(raw), content_type)
    except ValueError:
        return
    endpoint = ENDPOINTS["audio.transcriptions"]
    multipart.request_of(form, endpoint.required, endpoint.files)
    form.encode({"model": "whisper-1"})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=multipart_bodies)
def test_no_multipart_body_gets_a_500_from_the_gateway(media, raw):
    allocation = getattr(media, "fuzz_allocation", None) or media.allocation("whisper-1", ModelKind.STT)
    media.fuzz_allocation = allocation
    response = post(media.world, allocation, "audio/transcriptions", raw, content_type=CONTENT_TYPE)
    assert response.status_code != 500, response.text
