"""Self-service claims: the catalogue, the eligibility order and codes, the re-claim lock, races."""

import json
import threading
from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client

from allocations import selfservice
from allocations.models import Allocation, ApiKey, ReclaimLock
from allocations.services import allocation_pause, allocation_revoke, member_set_active
from tests.factories import AllocationFactory, CatalogModelFactory, MemberFactory, audit_actions
from tests.portal.conftest import dollar_price

pytestmark = pytest.mark.django_db


@pytest.fixture
def offered(db):
    model = CatalogModelFactory(
        slug="openai/gpt-4o-mini",
        display_name="GPT-4o mini",
        self_service=True,
        self_service_quota_tokens=100_000,
        self_service_cost_usd=Decimal("5"),
    )
    dollar_price(model)
    return model


def claim(client, slug):
    return client.post("/api/me/allocations", json.dumps({"model": slug}), content_type="application/json")


def code_of(response) -> str:
    return response.json()["error"]["code"]


def test_a_claim_makes_a_self_service_allocation_with_the_default_caps_and_a_key(alice, alice_client, offered):
    response = claim(alice_client, offered.slug)
    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == {"allocation", "key"}
    assert body["allocation"]["origin"] == "self_service"
    assert body["allocation"]["model"] == offered.slug
    allocation = Allocation.objects.get(member=alice)
    assert allocation.origin == "self_service"
    assert (allocation.quota_tokens_per_month, allocation.quota_cost_usd_per_month) == (100_000, Decimal("5"))
    key = ApiKey.objects.get(key_hash=ApiKey.hash(body["key"]))
    assert [s.allocation_id for s in key.scopes.all()] == [allocation.pk]
    assert "allocation_created" in audit_actions() and "key_created" in audit_actions()


def test_the_claimable_models_list_says_each_models_state(alice, alice_client, offered):
    CatalogModelFactory(slug="openai/not-offered")
    locked = CatalogModelFactory(slug="openai/locked", self_service=True, kind="embedding")
    ReclaimLock.objects.create(member=alice, model=locked)
    rows = alice_client.get("/api/me/claimable-models").json()["results"]
    assert [r["model"] for r in rows] == ["openai/gpt-4o-mini", "openai/locked"]
    first = rows[0]
    assert set(first) == {"model", "display_name", "kind", "price", "state"}
    assert (first["display_name"], first["kind"], first["state"]) == ("GPT-4o mini", "chat", "claimable")
    assert first["price"]["input_per_1m"] == "1.000000000" or first["price"]["input_per_1m"].startswith("1")
    assert rows[1]["state"] == "reclaim_locked"
    claim(alice_client, offered.slug)
    assert alice_client.get("/api/me/claimable-models").json()["results"][0]["state"] == "held"


def test_eligibility_member_active_first(alice, alice_client, offered):
    member_set_active(member=alice, is_active=False)
    response = claim(alice_client, offered.slug)
    # A disabled member's session is no longer authenticated, or the claim is refused: never a claim.
    assert response.status_code in (401, 403)
    assert not Allocation.objects.exists()
    alice.refresh_from_db()
    with pytest.raises(selfservice.Forbidden):
        selfservice.claim_check(member=alice, model=offered)


def test_a_model_not_offered_is_model_not_self_service(alice_client):
    model = CatalogModelFactory(slug="openai/private")
    response = claim(alice_client, model.slug)
    assert (response.status_code, code_of(response)) == (403, "model_not_self_service")
    assert claim(alice_client, "openai/unknown").status_code == 404


def test_an_unusable_model_is_model_forbidden(alice_client, offered, monkeypatch):
    monkeypatch.setattr(selfservice, "member_may_use", lambda member, model: False)
    response = claim(alice_client, offered.slug)
    assert (response.status_code, code_of(response)) == (403, "model_forbidden")


def test_a_model_already_held_is_already_claimed_admin_made_or_paused_alike(alice, alice_client, offered):
    admin_made = AllocationFactory(member=alice, model=offered)
    allocation_pause(allocation=admin_made)
    response = claim(alice_client, offered.slug)
    assert (response.status_code, code_of(response)) == (409, "already_claimed")


def test_an_admin_revoke_locks_the_reclaim_until_an_admin_unlocks(alice, alice_client, offered, staff, api):
    allocation = Allocation.objects.get(pk=claim(alice_client, offered.slug).json()["allocation"]["id"])
    allocation_revoke(allocation=allocation, actor=staff)
    assert ReclaimLock.objects.filter(member=alice, model=offered).exists()
    refused = claim(alice_client, offered.slug)
    assert (refused.status_code, code_of(refused)) == (403, "reclaim_locked")
    unlock = api.post(f"members/{alice.pk}/reclaim-locks/{offered.slug}/unlock")
    assert unlock.status_code == 200, unlock.content
    assert api.post(f"members/{alice.pk}/reclaim-locks/{offered.slug}/unlock").status_code == 404
    assert claim(alice_client, offered.slug).status_code == 201
    actions = audit_actions()
    assert "reclaim_locked" in actions and "reclaim_unlocked" in actions


def test_an_admin_made_allocation_revoked_does_not_lock(alice, alice_client, offered, staff):
    allocation_revoke(allocation=AllocationFactory(member=alice, model=offered), actor=staff)
    assert claim(alice_client, offered.slug).status_code == 201


def test_the_admin_api_sets_the_self_service_switch_and_caps(api, offered):
    response = api.patch(f"models/{offered.pk}", {"self_service": False, "self_service_cost_usd": "2.5"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["self_service"], body["self_service_cost_usd"]) == (False, "2.500000000")
    assert body["self_service_quota_tokens"] == 100_000
    bad = api.patch(f"models/{offered.pk}", {"self_service_cost_usd": "-1"})
    assert bad.status_code == 400 and "self_service_cost_usd" in bad.json()["error"]["fields"]
    assert "model_self_service_updated" in audit_actions()


@pytest.mark.django_db(transaction=True)
def test_two_claims_at_once_make_one_allocation(offered):
    member = MemberFactory(username="racer")
    barrier = threading.Barrier(2)
    outcomes = []

    def one_claim():
        try:
            barrier.wait()
            selfservice.claim(member=member, model=offered)
            outcomes.append("claimed")
        except selfservice.AlreadyClaimed:
            outcomes.append("already_claimed")
        finally:
            connection.close()

    threads = [threading.Thread(target=one_claim) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["already_claimed", "claimed"]
    assert Allocation.objects.filter(member=member, model=offered).count() == 1


def test_the_database_refuses_a_second_live_claim(alice, offered):
    AllocationFactory(member=alice, model=offered, origin="self_service")
    from django.db import IntegrityError, transaction

    with pytest.raises(IntegrityError), transaction.atomic():
        AllocationFactory(member=alice, model=offered, origin="self_service")


def test_the_portal_catalogue_claims_and_shows_the_key_once(alice, alice_client, offered):
    page = alice_client.get("/portal/catalogue/")
    assert page.status_code == 200 and offered.slug in page.content.decode()
    done = alice_client.post("/portal/catalogue/claim/", {"model": offered.slug})
    assert done.status_code == 302 and done["Location"] == "/portal/catalogue/"
    shown = alice_client.get("/portal/catalogue/")
    html = shown.content.decode()
    plaintext = html.split('id="claimed-key-value" type="text" readonly value="')[1].split('"')[0]
    assert ApiKey.objects.filter(key_hash=ApiKey.hash(plaintext)).exists()
    assert f'"model": "{offered.slug}"' in html and "http://testserver/v1/chat/completions" in html
    assert shown["Cache-Control"].startswith("no-store") or "no-store" in shown["Cache-Control"]
    assert plaintext not in alice_client.get("/portal/catalogue/").content.decode()  # once
    again = alice_client.post("/portal/catalogue/claim/", {"model": offered.slug}, follow=True)
    assert "already hold" in again.content.decode()


def test_another_members_claim_does_not_affect_mine(bob, offered):
    client = Client()
    client.force_login(bob)
    assert claim(client, offered.slug).status_code == 201
    assert Allocation.objects.filter(member=bob).count() == 1


def test_django_admin_sets_self_service_and_unlocks(admin_client, alice, offered, staff):
    page = admin_client.get(f"/admin/allocations/catalogmodel/{offered.pk}/change/")
    assert page.status_code == 200 and "self_service_cost_usd" in page.content.decode()
    lock = ReclaimLock.objects.create(member=alice, model=offered, locked_by=staff)
    listed = admin_client.get("/admin/allocations/reclaimlock/")
    assert listed.status_code == 200 and "alice" in listed.content.decode()
    done = admin_client.post(
        "/admin/allocations/reclaimlock/", {"action": "unlock", "_selected_action": [str(lock.pk)]}
    )
    assert done.status_code == 302
    assert not ReclaimLock.objects.exists() and "reclaim_unlocked" in audit_actions()
