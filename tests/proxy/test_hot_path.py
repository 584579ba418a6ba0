"""The hot path's shape: no middleware on /v1, a pinned number of queries per proxied call, and the
meters' shortcuts agreeing with a full parse."""

import asyncio
import json
import logging
from decimal import Decimal

import pytest
from asgiref.testing import ApplicationCommunicator
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpResponse
from django.test import override_settings
from django.urls import ResolverMatch
from django.utils import timezone
from hypothesis import given
from hypothesis import strategies as st

from allocations import access
from gateway_project.asgi import application  # before any log capture: django.setup() reconfigures logging
from proxy import accounting, gate, meters
from proxy import handler as handler_module
from proxy.handler import ProxyHandler, until_disconnect
from proxy.registry import ENDPOINTS
from quota import admission, ledger
from quota.models import CallRecord, UsageCounter
from quota.pricing import Usage
from tests.factories import AllocationFactory, PriceVersionFactory, make_key


async def _get(application, path, headers=(), extra=None):
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"x-request-id", b"req-mw"), *headers],
        "scheme": "http",
        "server": ("testserver", 80),
        **(extra or {}),
    }
    communicator = ApplicationCommunicator(application, scope)
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output(5)
    body = await communicator.receive_output(5)
    await communicator.wait(5)
    return start["status"], dict(start["headers"]), body.get("body", b"")


def sync_only_middleware(get_response):
    def middleware(request):
        return get_response(request)

    return middleware


class Collector(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def adapted(self) -> list[str]:
        return [m for m in self.messages if "adapted for middleware" in m]


@pytest.fixture
def django_request_log():
    logger = logging.getLogger("django.request")
    collector, level = Collector(), logger.level
    logger.addHandler(collector)
    logger.setLevel(logging.DEBUG)
    yield collector
    logger.removeHandler(collector)
    logger.setLevel(level)


@pytest.mark.django_db
async def test_v1_is_served_without_the_sync_middleware_stack(django_request_log):
    middleware = [*settings.MIDDLEWARE, f"{__name__}.sync_only_middleware"]
    with override_settings(DEBUG=True, MIDDLEWARE=middleware):  # Django logs adaptations only in DEBUG
        ASGIHandler()  # a sync-only middleware in the list gets the async path adapted (the probe works)
        assert django_request_log.adapted()
        django_request_log.messages.clear()
        handler = ProxyHandler()
        assert not django_request_log.adapted()
        assert handler._view_middleware == [] and handler._exception_middleware == []
        status, headers, body = await _get(application, "/v1/models")
    assert status == 401 and json.loads(body)["error"]["request_id"] == "req-mw"
    assert headers[b"X-Request-Id"] == b"req-mw"
    # Middleware leaves marks: SecurityMiddleware and XFrameOptionsMiddleware headers are absent on /v1...
    assert b"X-Frame-Options" not in headers and b"X-Content-Type-Options" not in headers
    assert not django_request_log.adapted()
    # ...and present on the rest of the site, which keeps the full stack.
    _, site_headers, _ = await _get(application, "/accounts/login/")
    assert b"X-Frame-Options" in site_headers


def _settle(admitted: admission.Admitted) -> None:
    """The thread path's settlement of a successful call (what ledger.settle_async does off the loop)."""
    record = admitted.plan.identity(admitted.key_id, admitted.member_id, admitted.entry)
    ledger.call_settle_durable(
        admission=admitted.admission,
        record={**record, "outcome": "success", "status_code": 200, "error_code": "", "error_message": ""},
        usage=Usage(input_tokens=3),
        price=admitted.price,
    )


def _plan(rid: str, plaintext: str, body: dict) -> admission.Plan:
    endpoint = ENDPOINTS["chat.completions"]
    return admission.Plan(
        request_id=rid,
        endpoint=endpoint.name,
        surface="/v1/chat/completions",
        kinds=endpoint.kinds,
        plaintext=plaintext,
        model=body["model"],
        started_at=timezone.now(),
        estimate=endpoint.estimate(body),
        body=body,
    )


@pytest.mark.django_db(transaction=True)  # top-level transactions, as in production: no SAVEPOINTs
def test_one_proxied_call_costs_a_pinned_number_of_queries(django_assert_max_num_queries):
    allocation = AllocationFactory(quota_cost_usd_per_month=Decimal("5"), quota_tokens_per_month=10**6)
    PriceVersionFactory(model=allocation.model)
    _, plaintext = make_key(member=allocation.member, allocations=[allocation])
    body = {"model": allocation.model.slug, "messages": [{"role": "user", "content": "hi"}]}

    def one_call(rid):
        admitted = admission.admit_on_thread(plan=_plan(rid, plaintext, body))
        assert isinstance(admitted, admission.Admitted)
        _settle(admitted)

    one_call("warm")  # fills the per-process key scope and price caches
    # The auth generation's read (lib.cache: one primary-key row), then one statement (guarded
    # UPDATE of the counter + INSERT reservation in a CTE), no BEGIN/COMMIT. No key, scope, price or
    # counter read.
    with django_assert_max_num_queries(2):
        admitted = admission.admit_on_thread(plan=_plan("open", plaintext, body))
    assert isinstance(admitted, admission.Admitted)
    # One statement (DELETE reservation, counter UPDATE with usage in and reservation out, INSERT record).
    with django_assert_max_num_queries(1):
        _settle(admitted)
    assert CallRecord.objects.count() == 2 and UsageCounter.objects.get().tokens_used == 6


usage_objects = st.fixed_dictionaries(
    {"prompt_tokens": st.integers(0, 10**9), "completion_tokens": st.integers(0, 10**9)},
    optional={"prompt_tokens_details": st.fixed_dictionaries({"cached_tokens": st.integers(0, 10**6)})},
)


@given(
    usage=usage_objects,
    vector=st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=50),
    text=st.text(max_size=50),
)
def test_the_usage_shortcut_agrees_with_a_full_parse(usage, vector, text):
    body = json.dumps({"object": "list", "data": [{"embedding": vector, "note": text}], "usage": usage}).encode()
    assert meters.find_usage(body) == json.loads(body)["usage"]
    assert meters.chat_usage(meters.find_usage(body)).input_tokens == usage["prompt_tokens"]


@given(text=st.text(max_size=40))
def test_usage_inside_a_string_is_not_mistaken_for_the_usage_object(text):
    body = json.dumps({"choices": [{"message": {"content": '"usage": {"x": 1} ' + text}}], "usage": {"a": 1}})
    assert meters.find_usage(body.encode()) == {"a": 1}
    assert not meters.has_usage_object(json.dumps({"delta": '"usage": {"x": 1}', "usage": None}).encode())
    assert meters.has_usage_object(b'{"choices":[],"usage": {"prompt_tokens":1}}')


def test_the_reservation_estimate_is_the_prompt_plus_the_output_limit(settings):
    settings.GATEWAY_DEFAULT_MAX_OUTPUT_TOKENS = 100
    body = {"messages": [{"role": "user", "content": "x" * 400}]}
    estimate = meters.estimate_chat(body)
    assert estimate.output_tokens == 100 and 100 < estimate.input_tokens < 120
    assert meters.estimate_chat({**body, "max_tokens": 7}).output_tokens == 7
    estimate = meters.estimate_responses({"input": "abcd", "max_output_tokens": 9})
    assert estimate == Usage(input_tokens=1, output_tokens=9)


@pytest.mark.django_db
async def test_an_unexpected_error_in_a_v1_view_is_answered_in_the_envelope(monkeypatch):
    def broken(**kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(accounting, "models_for", broken)
    monkeypatch.setattr(gate, "key_scope_held", lambda plaintext: "digest")  # past the door: into the view
    status, headers, body = await _get(application, "/v1/models", [(b"authorization", b"Bearer sk-gw-" + b"k" * 43)])
    error = json.loads(body)["error"]
    assert status == 500 and headers[b"Content-Type"] == b"application/json"
    assert (error["code"], error["request_id"]) == ("gateway_error", "req-mw")
    assert "a bug" not in body.decode()


@pytest.mark.parametrize(
    "body",
    [
        {"id": "r1", "usage": {"input_tokens": 900}, "metadata": {"usage": {"input_tokens": 1}}},
        {"usage": {"prompt_tokens": 900}, "choices": [{"message": {"tool_calls": [{"usage": {"prompt_tokens": 1}}]}}]},
        {"usage": {"prompt_tokens": 900}, "echo": [{"usage": {"prompt_tokens": 1}}], "x": {"usage": {}}},
        {"usage": {"prompt_tokens": 900}, 'x"usage': {"prompt_tokens": 1}},
        # the string "usage" in an echoed array, then the next key's colon and a planted object
        {"usage": {"prompt_tokens": 900}, "input": ["hi", "usage"], "z": {"prompt_tokens": 1}},
        {"usage": {"prompt_tokens": 900}, "input": [",", "usage"], "usage_": {"prompt_tokens": 1}},
    ],
)
def test_only_the_top_level_usage_object_is_billed_never_one_planted_in_echoed_content(body):
    raw = json.dumps(body).encode()
    assert meters.find_usage(raw) == body["usage"]
    assert meters.find_usage(json.dumps(body, indent=2).encode()) == body["usage"]


@given(
    usage=usage_objects,
    planted=usage_objects,
    tail=st.dictionaries(
        st.text(max_size=8), st.recursive(st.none() | st.integers(), st.lists, max_leaves=5), max_size=3
    ),
)
def test_a_usage_object_nested_after_the_top_level_one_is_never_taken_for_it(usage, planted, tail):
    body = json.dumps({"usage": usage, **{k: v for k, v in tail.items() if k != "usage"}, "z": {"usage": planted}})
    assert meters.find_usage(body.encode()) == usage
    assert meters.find_usage(json.dumps({"metadata": {"usage": planted}}).encode()) is None


def test_the_edges_digest_is_carried_only_for_the_bearer_it_was_computed_for():
    key, other = "sk-gw-" + "a" * 43, "sk-gw-" + "b" * 43
    digest = access.key_digest(key)
    assert gate.digest_carried(key, (key, digest)) == digest
    assert gate.digest_carried(other, (key, digest)) == ""
    assert gate.digest_carried("", (key, digest)) == ""
    assert gate.digest_carried(key, None) == ""


@pytest.mark.django_db
async def test_a_scope_without_the_edges_verdict_meets_the_door_and_one_with_it_does_not(monkeypatch):
    """Only the server's patch puts the verdict in a scope (a client's headers cannot): without it
    the handler runs the door; with it the door is not run again and the view gets the verdict."""
    unknown = [(b"authorization", b"Bearer sk-gw-" + b"Z" * 43)]
    status, _, body = await _get(application, "/v1/chat/completions", unknown + [(gate.PASSED.encode(), b"x")])
    assert status == 401 and json.loads(body)["error"]["code"] == "unauthorized"

    async def no_door(scope):
        raise AssertionError("the door ran again")

    seen = []

    async def view(request, *args, **kwargs):
        seen.append(request.gateway_passed)
        return HttpResponse(b"{}", content_type="application/json")

    monkeypatch.setattr(gate, "refusal", no_door)
    monkeypatch.setattr(ProxyHandler, "resolve_request", lambda self, request: ResolverMatch(view, (), {}))
    verdict = ("sk-gw-" + "Z" * 43, "digest")
    status, _, _ = await _get(ProxyHandler(), "/v1/chat/completions", unknown, extra={gate.PASSED: verdict})
    assert status == 200 and seen == [verdict]


@pytest.mark.django_db
async def test_the_disconnect_listener_of_an_answered_call_never_outlives_it(monkeypatch):
    """After an answer daphne says http.disconnect and the listener ends by itself; a server that
    never says it gets the listener cancelled on the loop's next turn: none stays pending."""
    listeners = []

    async def recorded(receive):
        listeners.append(asyncio.current_task())
        await until_disconnect(receive)

    async def view(request, *args, **kwargs):
        return HttpResponse(b"{}", content_type="application/json")

    monkeypatch.setattr(handler_module, "until_disconnect", recorded)
    monkeypatch.setattr(ProxyHandler, "resolve_request", lambda self, request: ResolverMatch(view, (), {}))
    verdict = ("sk-gw-" + "Z" * 43, "digest")
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "headers": [(b"authorization", f"Bearer {verdict[0]}".encode())],
        "scheme": "http",
        "server": ("testserver", 80),
        gate.PASSED: verdict,
    }
    communicator = ApplicationCommunicator(ProxyHandler(), scope)
    await communicator.send_input({"type": "http.request", "body": b"{}"})
    assert (await communicator.receive_output(5))["status"] == 200
    await communicator.receive_output(5)
    await communicator.wait(5)
    for _ in range(3):
        await asyncio.sleep(0)
    [listener] = listeners
    assert listener.done() and listener.cancelled()
