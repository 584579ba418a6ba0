"""/v1's request and whole answers without Django's per-call objects: proxy.handler's V1Request reads
as Django's ASGIRequest does, and lib.asgi.Whole sends what an HttpResponse with the same content
and headers sends through ASGIHandler.send_response."""

import io

import pytest
from django.core.handlers.asgi import ASGIHandler, ASGIRequest
from django.http import HttpResponse
from django.http.response import BadHeaderError

from allocations.exceptions import BadRequest
from lib.asgi import Whole, header_value
from lib.http import request_id_of, sent_header
from proxy.handler import V1Request, _urlconf_set
from proxy.registry import BODY_MULTIPART, ENDPOINTS, spools
from proxy.views import _response, error_response
from quota.exceptions import QuotaBusy

HEADERS = [
    (b"host", b"127.0.0.1:8000"),
    (b"content-type", b"application/json; charset=latin-1"),
    (b"authorization", b"Bearer sk-gw-abc"),
    (b"x-request-id", b"first"),
    (b"X-Request-Id", b"second"),  # joined with the first, as META joins them
    (b"x_request_id", b"spoofed"),  # an underscore: left out of META, so of sent_header too
    (b"x-caf\xe9", b"cr\xe8me"),
    (b"content-length", b"2"),
]


def scope(headers=HEADERS, **extra):
    return {
        "type": "http",
        "method": "post",
        "path": "/prefix/v1/chat/completions",
        "root_path": "/prefix",
        "query_string": b"a=1&b=%C3%A9",
        "headers": headers,
        "client": ("10.0.0.1", 5555),
        "server": ("127.0.0.1", 8000),
        **extra,
    }


def django_request(s):
    request = ASGIRequest(s, io.BytesIO(b"{}"))
    request._body = b"{}"
    return request


@pytest.mark.parametrize("headers", [HEADERS, [], [(b"content-type", b"application/json")]])
def test_the_v1_request_reads_as_django_s(headers):
    ours, theirs = V1Request(scope(headers), b"{}"), django_request(scope(headers))
    for key in ("HTTP_AUTHORIZATION", "HTTP_X_REQUEST_ID", "HTTP_HOST", "HTTP_MISSING"):
        assert sent_header(ours, key) == theirs.META.get(key, "")
    assert "META" not in ours.__dict__  # read from the scope
    for name in ("path", "path_info", "script_name", "method", "body", "resolver_match"):
        assert getattr(ours, name) == getattr(theirs, name)
    assert ours.content_type == theirs.content_type
    assert ours.content_params == theirs.content_params
    assert ours.encoding == theirs.encoding
    assert ours.META == theirs.META
    assert dict(ours.headers) == dict(theirs.headers)
    assert ours.GET == theirs.GET
    assert sent_header(ours, "HTTP_X_REQUEST_ID") == theirs.META.get("HTTP_X_REQUEST_ID", "")  # from META, once built
    assert not hasattr(ours, "urlconf")


def test_the_encoding_is_read_before_meta_is_built():
    assert V1Request(scope(), b"{}").encoding == "latin-1"
    request = V1Request(scope(), b"{}")
    request.encoding = "utf-8"
    assert request.encoding == "utf-8"


def test_a_request_id_is_read_as_from_django_s_request():
    one = [(b"x-request-id", b"req-1")]
    assert request_id_of(V1Request(scope(one), b"")) == request_id_of(django_request(scope(one))) == "req-1"
    assert request_id_of(V1Request(scope(), b"")) != "first,second"  # joined, then refused as unsafe


def test_a_query_string_that_is_not_utf8_is_refused_as_django_refuses_it():
    with pytest.raises(UnicodeDecodeError):
        django_request(scope(query_string=b"a=\xff"))
    with pytest.raises(UnicodeDecodeError):
        V1Request(scope(query_string=b"a=\xff"), b"")


async def messages(response):
    sent = []

    async def send(message):
        sent.append(message)

    if isinstance(response, Whole):
        await response.send(send)
    else:
        await ASGIHandler().send_response(response, send)
    return sent


def django_answer(body, status, content_type, request_id):
    response = HttpResponse(body, status=status, content_type=content_type)
    response["Content-Length"] = str(len(body))
    response["X-Request-Id"] = request_id
    return response


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"id": "x"}', "application/json"),
        (b"", "application/json"),
        (b"x" * (2**16 * 2 + 5), "text/plain; charset=utf-8"),  # past Django's 64 KiB chunks
        (b"<p>", "text/html; charset=\xe9"),  # latin-1, kept
        (b"<p>", "text/html; name=\u2603"),  # not latin-1: MIME-encoded
    ],
)
async def test_a_whole_answer_sends_what_an_http_response_sends(body, content_type):
    ours, theirs = _response(body, 201, content_type, "req-1"), django_answer(body, 201, content_type, "req-1")
    ours["X-RateLimit-Remaining-Requests"] = "9"
    theirs["X-RateLimit-Remaining-Requests"] = "9"
    ours["content-type"] = theirs["content-type"] = content_type  # replaced in place, the name's case as set
    assert await messages(ours) == await messages(theirs)
    assert ours.has_header("x-request-id") and ours["X-REQUEST-ID"] == "req-1"
    assert ours.serialize_headers() == theirs.serialize_headers()
    assert ours.reason_phrase == theirs.reason_phrase


async def test_an_error_answer_sends_what_an_http_response_sends():
    error = QuotaBusy("busy")
    ours = error_response(error, "req-2")
    theirs = HttpResponse(ours.content.decode(), status=error.status, content_type="application/json")
    theirs["X-Request-Id"] = "req-2"
    theirs["Retry-After"] = str(error.retry_after)
    assert await messages(ours) == await messages(theirs)
    assert (await messages(error_response(BadRequest("no"), "r")))[0]["headers"] == [
        (b"Content-Type", b"application/json"),
        (b"X-Request-Id", b"r"),
    ]


def test_a_header_value_with_a_newline_is_refused_as_django_refuses_it():
    with pytest.raises(BadHeaderError):
        HttpResponse()["X-Tools"] = "a\nb"
    with pytest.raises(BadHeaderError):
        _response(b"", 200, "application/json", "r")["X-Tools"] = "a\nb"
    assert header_value("plain") == "plain"


def test_the_spooled_paths_are_the_multipart_endpoints():
    paths = [
        f"{prefix}{e.path}{end}" for e in ENDPOINTS.values() for prefix in ("/v1/", "/v2/", "/") for end in ("", "/")
    ]
    for path in [*paths, "/v1/", "/v1", ""]:
        scanned = path.startswith("/v1/") and any(
            e.body == BODY_MULTIPART and path.rstrip("/") == "/v1/" + e.path for e in ENDPOINTS.values()
        )
        assert spools(path) is scanned
    assert any(spools(p) for p in paths)


def test_a_urlconf_is_seen_as_hasattr_sees_it():
    ours, theirs = V1Request(scope(), b"{}"), django_request(scope())
    assert _urlconf_set(ours) is hasattr(ours, "urlconf") is False
    assert _urlconf_set(theirs) is hasattr(theirs, "urlconf") is False
    ours.urlconf = theirs.urlconf = "gateway_project.urls"  # as a middleware sets it
    assert _urlconf_set(ours) is hasattr(ours, "urlconf") is True
    assert _urlconf_set(theirs) is hasattr(theirs, "urlconf") is True
