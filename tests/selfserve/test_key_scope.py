"""Key scope editing (member API and admin API): add and remove, ≥ 1 remains, one per model,
own allocations only, audited."""

import json

import pytest

from allocations.models import AuditEvent
from allocations.services import allocation_revoke
from tests.factories import AllocationFactory, CatalogModelFactory, make_key

pytestmark = pytest.mark.django_db


@pytest.fixture
def setup(alice, alice_alloc):
    other = AllocationFactory(member=alice, model=CatalogModelFactory(slug="openai/o3-mini"))
    key, _ = make_key(member=alice, allocations=[alice_alloc])
    return key, alice_alloc, other


def patch(client, key, body):
    return client.patch(f"/api/me/keys/{key.pk}", json.dumps(body), content_type="application/json")


def scope_of(key):
    return sorted(str(s.allocation_id) for s in key.scopes.all())


def test_a_member_adds_and_removes_in_one_change(alice_client, setup):
    key, first, other = setup
    response = patch(alice_client, key, {"add": [str(other.pk)], "remove": [str(first.pk)]})
    assert response.status_code == 200, response.content
    assert scope_of(key) == [str(other.pk)]
    assert response.json()["allocations"] and str(other.pk) in json.dumps(response.json())
    event = AuditEvent.objects.get(action="key_scope_updated")
    assert event.before == {"allocations": [str(first.pk)]} and event.after == {"allocations": [str(other.pk)]}


def test_at_least_one_allocation_remains(alice_client, setup):
    key, first, _ = setup
    response = patch(alice_client, key, {"remove": [str(first.pk)]})
    assert response.status_code == 400 and "remove" in response.json()["error"]["fields"]
    assert scope_of(key) == [str(first.pk)]


def test_one_allocation_per_model(alice, alice_client, setup):
    key, first, _ = setup
    twin = AllocationFactory(member=alice, model=first.model)
    response = patch(alice_client, key, {"add": [str(twin.pk)]})
    assert (response.status_code, response.json()["error"]["code"]) == (409, "scope_conflict")
    # Swapping one allocation of a model for another in one change is fine.
    assert patch(alice_client, key, {"add": [str(twin.pk)], "remove": [str(first.pk)]}).status_code == 200


def test_only_the_members_own_allocations_and_keys(alice_client, bob_client, setup, bob_alloc):
    key, _, _ = setup
    assert patch(alice_client, key, {"add": [str(bob_alloc.pk)]}).status_code == 404
    assert patch(bob_client, key, {"add": [str(bob_alloc.pk)]}).status_code == 404


def test_a_revoked_allocation_cannot_be_added_and_unknown_fields_are_refused(alice_client, setup):
    key, _, other = setup
    allocation_revoke(allocation=other)
    assert patch(alice_client, key, {"add": [str(other.pk)]}).status_code == 400
    assert patch(alice_client, key, {"scope": []}).status_code == 400


def test_rename_still_works_with_the_same_patch(alice_client, setup):
    key, _, _ = setup
    response = patch(alice_client, key, {"name": "renamed"})
    assert response.status_code == 200 and response.json()["name"] == "renamed"


def test_an_admin_edits_any_key_within_its_owners_allocations(api, setup, bob_alloc):
    key, first, other = setup
    response = api.patch(f"keys/{key.pk}", {"add": [str(other.pk)]})
    assert response.status_code == 200, response.content
    assert sorted(response.json()["allocations"]) == sorted([str(first.pk), str(other.pk)])
    foreign = api.patch(f"keys/{key.pk}", {"add": [str(bob_alloc.pk)]})
    assert (foreign.status_code, foreign.json()["error"]["code"]) == (403, "scope_forbidden")
    assert api.patch(f"keys/{key.pk}", {"remove": [str(first.pk), str(other.pk)]}).status_code == 400
    assert AuditEvent.objects.filter(action="key_scope_updated").count() == 1


def test_removing_an_allocation_not_in_the_scope_is_refused(alice_client, setup):
    key, _, other = setup
    response = patch(alice_client, key, {"remove": [str(other.pk)]})
    assert response.status_code == 400 and "not in this key's scope" in response.json()["error"]["fields"]["remove"][0]
