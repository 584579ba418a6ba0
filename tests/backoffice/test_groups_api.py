"""/api/admin/groups, /api/admin/group-rules and the model access endpoints (SPEC 10): every write
audited, every bad input a field error in the envelope."""

from decimal import Decimal

import pytest

from allocations.models import AuditEvent, Group
from lib.cache import auth_generation
from tests.backoffice.conftest import error_of
from tests.factories import CatalogModelFactory, MemberFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def group(api):
    response = api.post("groups", {"name": "Research", "quota_cost_usd_per_month": "25.5"})
    assert response.status_code == 201, response.content
    return response.json()


def test_a_group_is_created_with_a_slug_from_its_name_and_audited(group):
    assert (group["name"], group["slug"]) == ("Research", "research")
    assert Decimal(group["quota_cost_usd_per_month"]) == Decimal("25.5")
    assert group["quota_tokens_per_month"] is None and group["members"] == []
    event = AuditEvent.objects.get(action="group_created")
    assert event.after["slug"] == "research" and event.actor_label == "admin"


def test_a_group_is_listed_retrieved_patched_and_deleted(api, group):
    assert [g["slug"] for g in api.get("groups").json()["results"]] == ["research"]
    assert api.get(f"groups/{group['id']}").json()["name"] == "Research"
    patched = api.patch(f"groups/{group['id']}", {"quota_tokens_per_month": 1000, "name": "R&D"})
    assert patched.status_code == 200 and patched.json()["quota_tokens_per_month"] == 1000
    event = AuditEvent.objects.get(action="group_updated")
    assert event.before == {"name": "Research", "quota_tokens_per_month": None}
    assert api._call("delete", f"groups/{group['id']}").status_code == 204
    assert not Group.objects.exists() and AuditEvent.objects.filter(action="group_deleted").exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "X", "slug": "Not A Slug"}, "slug"),
        ({"name": "X", "quota_cost_usd_per_month": "-1"}, "quota_cost_usd_per_month"),
        ({"name": "X", "quota_tokens_per_month": "many"}, "quota_tokens_per_month"),
        ({"name": "X", "colour": "red"}, "colour"),
    ],
)
def test_a_bad_group_is_a_field_error(api, body, field):
    response = api.post("groups", body)
    assert response.status_code == 400 and field in error_of(response)["fields"]
    assert not Group.objects.exists()


def test_a_duplicate_group_is_a_conflict(api, group):
    response = api.post("groups", {"name": "Research"})
    assert response.status_code == 409 and "name" in error_of(response)["fields"]


def test_members_are_added_and_removed_in_bulk_audited_and_listed_on_the_member(
    api, group, django_capture_on_commit_callbacks
):
    ann, bob = MemberFactory(username="ann"), MemberFactory(username="bob")
    before = auth_generation()
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(f"groups/{group['id']}/members", {"add": ["ann", str(bob.pk)]})
    assert response.status_code == 200 and response.json()["members"] == ["ann", "bob"]
    assert auth_generation() != before  # the next call of every process sees it
    assert api.get(f"members/{ann.pk}").json()["groups"] == ["research"]
    api.post(f"groups/{group['id']}/members", {"remove": ["ANN"], "add": ["bob"]})
    assert api.get(f"members/{ann.pk}").json()["groups"] == []
    events = AuditEvent.objects.filter(action__startswith="group_member_").order_by("created_at", "id")
    assert [(e.action, e.after["member"]) for e in events] == [
        ("group_member_added", "ann"),
        ("group_member_added", "bob"),
        ("group_member_removed", "ann"),
    ]


def test_an_unknown_member_changes_nothing(api, group):
    MemberFactory(username="ann")
    response = api.post(f"groups/{group['id']}/members", {"add": ["ann", "nobody"]})
    assert response.status_code == 400 and "nobody" in error_of(response)["fields"]["add"][0]
    assert not Group.objects.get(pk=group["id"]).members.exists()


def test_rules_are_managed_guarded_and_tested_dry(api, group):
    body = {"order": 1, "matcher": "email_domain", "pattern": "@Lab.org", "group": "research"}
    response = api.post("group-rules", body)
    assert response.status_code == 201, response.content
    rule = response.json()
    assert (rule["pattern"], rule["group"], rule["enabled"]) == ("lab.org", "research", True)
    refused = api.post("group-rules", {"matcher": "username_regex", "pattern": "(a+)+", "group": "research"})
    assert refused.status_code == 400 and "pattern" in error_of(refused)["fields"]
    unknown = api.post("group-rules", {"matcher": "always", "group": "nope"})
    assert unknown.status_code == 400 and "group" in error_of(unknown)["fields"]
    tested = api.post("group-rules/test", {"email": "zoe@lab.org"}).json()
    assert tested["matched"] and tested["rule"]["id"] == rule["id"] and tested["group"]["slug"] == "research"
    assert api.post("group-rules/test", {"username": "zoe"}).json() == {
        "matched": False,
        "rule": None,
        "group": None,
        "failed_rules": [],
    }
    assert api.patch(f"group-rules/{rule['id']}", {"enabled": False}).json()["enabled"] is False
    assert api._call("delete", f"group-rules/{rule['id']}").status_code == 204
    actions = set(AuditEvent.objects.filter(target_type="grouprule").values_list("action", flat=True))
    assert actions == {"group_rule_created", "group_rule_updated", "group_rule_deleted"}


def test_members_created_through_the_admin_api_are_placed_by_the_rules(api, group):
    api.post("group-rules", {"order": 1, "matcher": "email_suffix", "pattern": "@lab.org", "group": "research"})
    created = api.post("members", {"username": "yan", "email": "yan@lab.org"}).json()
    assert created["groups"] == ["research"]


def test_model_access_is_set_by_slug_or_id_and_answered_for_a_model_and_a_member(api, group):
    model = CatalogModelFactory(slug="lab/secret")
    ann, bob = MemberFactory(username="ann"), MemberFactory(username="bob")
    banned = api.post("groups", {"name": "Banned"}).json()
    api.post(f"groups/{group['id']}/members", {"add": ["ann", "bob"]})
    api.post(f"groups/{banned['id']}/members", {"add": ["bob"]})
    response = api.patch(
        f"models/{model.pk}", {"access": "restricted", "allowed_groups": ["research"], "denied_groups": [banned["id"]]}
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["access"], body["allowed_groups"], body["denied_groups"]) == ("restricted", ["research"], ["banned"])
    event = AuditEvent.objects.get(action="model_access_updated")
    assert event.before["access"] == "open" and event.after["denied_groups"] == ["banned"]
    who = api.get(f"models/{model.pk}/access").json()
    assert [m["username"] for m in who["members"]] == ["ann"]
    why = api.get(f"members/{bob.pk}/access", {"model": "lab/secret"}).json()
    assert why["allowed"] is False and "banned" in why["reasons"][-1]
    assert api.get(f"members/{ann.pk}/access", {"model": str(model.pk)}).json()["allowed"] is True
    missing = api.get(f"members/{ann.pk}/access")
    assert missing.status_code == 400 and "model" in error_of(missing)["fields"]
    bad = api.patch(f"models/{model.pk}", {"allowed_groups": ["nope"]})
    assert bad.status_code == 400 and "allowed_groups" in error_of(bad)["fields"]


def _records_of_groups(groups_by_call: list[tuple[list, str | None, int]]):
    """Call records as settled calls leave them: group ids fixed at admission, cost, tokens."""
    from django.utils import timezone

    from quota.models import CallRecord
    from tests.factories import roll_up_records

    for n, (group_ids, cost, tokens) in enumerate(groups_by_call):
        CallRecord.objects.create(
            request_id=f"g{n}",
            endpoint="chat.completions",
            started_at=timezone.now(),
            outcome="success",
            input_tokens=tokens,
            cost_usd=None if cost is None else Decimal(cost),
            priced=cost is not None,
            group_ids=group_ids,
        )
    roll_up_records()  # records written by hand: their daily rollups, as the settlement writes them


def test_usage_by_group_counts_a_call_in_each_of_its_groups_and_says_unpriced(api, group):
    other = Group.objects.create(name="Ops", slug="ops")
    research = Group.objects.get(pk=group["id"])
    _records_of_groups(
        [
            ([research.pk, other.pk], "0.5", 100),
            ([research.pk], "0.25", 10),
            ([other.pk], None, 7),
            ([], "9", 1),  # a member in no group: in no group's row
        ]
    )
    body = api.get("usage", {"group_by": "group"}).json()
    assert body["group_by"] == "group"
    rows = {r["group"]: r for r in body["results"]}
    assert set(rows) == {"research", "ops"}
    assert rows["research"]["group_id"] == str(research.pk)
    assert (rows["research"]["calls"], rows["research"]["total_tokens"], rows["research"]["cost_usd"]) == (
        2,
        110,
        "0.750000000",
    )
    assert (rows["ops"]["calls"], rows["ops"]["unpriced_calls"], rows["ops"]["cost_usd"]) == (2, 1, "0.500000000")
    csv_text = api.get("usage", {"group_by": "group", "format": "csv"}).content.decode("utf-8-sig")
    assert csv_text.splitlines()[0].startswith("group_id,group,calls")


def test_a_group_object_carries_this_months_spend_and_tokens(api, group):
    from django.utils import timezone

    from quota.models import GroupUsageCounter
    from quota.periods import period_start_date

    assert (group["cost_used_this_month"], group["tokens_used_this_month"]) == ("0.000000000", 0)
    GroupUsageCounter.objects.create(
        group_id=group["id"], period_start=period_start_date(timezone.now()), cost_used=Decimal("3.5"), tokens_used=42
    )
    [listed] = api.get("groups").json()["results"]
    one = api.get(f"groups/{group['id']}").json()
    for body in (listed, one):
        assert (body["cost_used_this_month"], body["tokens_used_this_month"]) == ("3.500000000", 42)


def test_a_budget_change_is_audited_and_seen_by_the_next_call(api, group, django_capture_on_commit_callbacks):
    before = auth_generation()
    with django_capture_on_commit_callbacks(execute=True):
        patched = api.patch(f"groups/{group['id']}", {"quota_cost_usd_per_month": "40"})
    assert patched.status_code == 200
    event = AuditEvent.objects.get(action="group_updated")
    assert event.before == {"quota_cost_usd_per_month": "25.500000000"}
    assert event.after == {"quota_cost_usd_per_month": "40.000000000"}
    assert auth_generation() != before  # the key snapshots carrying the group's caps are reloaded
