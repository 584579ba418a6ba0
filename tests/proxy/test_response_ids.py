"""Responses API ids belong to the member whose call created them: another member's
`previous_response_id` is 404 `not_found` (never forwarded), and /v1/responses/{id} is not relayed."""

import httpx
import openai
import pytest

from quota.models import CallRecord

from .conftest import record_of


@pytest.fixture
def two_members(world):
    from tests.factories import MemberFactory

    mine = world.allocation()
    theirs = world.allocation(member=MemberFactory(username="mallory"), slug=f"{mine.model.slug}-x")
    return mine, theirs


@pytest.mark.parametrize("stream", [False, True])
def test_a_member_continues_their_own_response(world, fake_upstream, stream):
    allocation = world.allocation()
    client = world.client(allocation.plaintext)
    if stream:
        events = list(client.responses.create(model=allocation.model.slug, input="hi", stream=True))
        first = next(e.response for e in events if e.type == "response.completed")
    else:
        first = client.responses.create(model=allocation.model.slug, input="hi")
    second = client.responses.create(model=allocation.model.slug, input="more", previous_response_id=first.id)
    assert second.id != first.id
    assert fake_upstream.last["body"]["previous_response_id"] == first.id


def test_another_members_response_id_is_not_found_and_never_forwarded(world, fake_upstream, two_members):
    mine, theirs = two_members
    first = world.client(mine.plaintext).responses.create(model=mine.model.slug, input="secret plan")
    sent = len(fake_upstream.requests)
    with pytest.raises(openai.NotFoundError) as refused:
        world.client(theirs.plaintext).responses.create(
            model=theirs.model.slug, input="what did I say?", previous_response_id=first.id,
            extra_headers={"X-Request-Id": "req-steal"},
        )  # fmt: skip
    assert refused.value.body["code"] == "not_found"
    assert len(fake_upstream.requests) == sent
    record = record_of("req-steal")
    assert (record.status_code, record.error_code, record.outcome) == (404, "not_found", "rejected_bad_request")
    assert record.input_tokens == record.output_tokens == 0 and not record.cost_usd
    assert record.allocation_id == theirs.pk


@pytest.mark.parametrize("unknown", ["resp_never_relayed", 42, ""])
def test_an_unknown_response_id_is_not_found(world, fake_upstream, unknown):
    allocation = world.allocation()
    response = httpx.post(
        f"{world.gateway_url}/v1/responses",
        json={"model": allocation.model.slug, "input": "x", "previous_response_id": unknown},
        headers={"Authorization": f"Bearer {allocation.plaintext}"},
    )
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert fake_upstream.requests == []
    assert CallRecord.objects.get().outcome == "rejected_bad_request"


@pytest.mark.parametrize(("method", "suffix"), [("GET", ""), ("DELETE", ""), ("GET", "/input_items")])
def test_retrieving_or_deleting_a_response_is_not_relayed(world, fake_upstream, two_members, method, suffix):
    mine, theirs = two_members
    first = world.client(mine.plaintext).responses.create(model=mine.model.slug, input="hi")
    for key in (mine.plaintext, theirs.plaintext):
        response = httpx.request(
            method, f"{world.gateway_url}/v1/responses/{first.id}{suffix}", headers={"Authorization": f"Bearer {key}"}
        )
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert len(fake_upstream.requests) == 1
