"""Django admin: a group page with its members, group rules behind the regex guard, the bulk
add-to-group action on the member list, and the access answers on the model and member pages."""

import pytest
from django.urls import reverse

from allocations.groups import group_create, group_members_change, model_access_update
from allocations.models import AuditEvent, Group, GroupRule
from tests.factories import CatalogModelFactory, MemberFactory

pytestmark = pytest.mark.django_db


def test_a_group_is_added_with_its_members_through_the_services(admin_client):
    ann, bob = MemberFactory(username="ann"), MemberFactory(username="bob")
    response = admin_client.post(
        reverse("admin:allocations_group_add"),
        {"name": "Research", "slug": "research", "members": [ann.pk, bob.pk]},
    )
    assert response.status_code == 302, response.content
    group = Group.objects.get(slug="research")
    assert sorted(group.members.values_list("username", flat=True)) == ["ann", "bob"]
    actions = sorted(AuditEvent.objects.values_list("action", flat=True))
    assert actions == ["group_created", "group_member_added", "group_member_added"]
    page = admin_client.get(reverse("admin:allocations_group_change", args=[group.pk])).content.decode()
    assert "ann" in page and "spend this month / budget" in page.lower() and "no cap" in page
    admin_client.post(
        reverse("admin:allocations_group_change", args=[group.pk]),
        {"name": "Research", "slug": "research", "members": [ann.pk]},
    )
    assert AuditEvent.objects.filter(action="group_member_removed", after__member="bob").exists()


def test_a_catastrophic_rule_pattern_is_a_form_error(admin_client):
    group = group_create(data={"name": "G", "slug": "g"})
    url = reverse("admin:allocations_grouprule_add")
    body = {"order": 1, "matcher": "username_regex", "pattern": "(a+)+", "group": group.pk, "enabled": "on"}
    response = admin_client.post(url, body)
    assert response.status_code == 200 and "nested quantifiers" in response.content.decode()
    assert not GroupRule.objects.exists()
    assert admin_client.post(url, {**body, "pattern": "svc-[a-z]+"}).status_code == 302
    assert AuditEvent.objects.filter(action="group_rule_created").exists()


def test_the_member_list_adds_the_selected_members_to_a_group(admin_client):
    ann, bob = MemberFactory(username="ann"), MemberFactory(username="bob")
    group = group_create(data={"name": "Ops", "slug": "ops"})
    action = f"add_to_group_{group.pk.hex}"
    response = admin_client.post(
        reverse("admin:allocations_member_changelist"), {"action": action, "_selected_action": [ann.pk, bob.pk]}
    )
    assert response.status_code == 302
    assert sorted(group.members.values_list("username", flat=True)) == ["ann", "bob"]
    assert AuditEvent.objects.filter(action="group_member_added").count() == 2


def test_the_model_and_member_pages_show_the_access_answer(admin_client):
    ann, bob = MemberFactory(username="ann"), MemberFactory(username="bob")
    research = group_create(data={"name": "Research", "slug": "research"})
    group_members_change(group=research, add=["ann"])
    model = CatalogModelFactory(slug="lab/secret")
    model_access_update(model=model, changes={"access": "restricted", "allowed_groups": ["research"]})
    page = admin_client.get(reverse("admin:allocations_catalogmodel_change", args=[model.pk])).content.decode()
    assert "1 member(s) may use it: ann" in page
    page = admin_client.get(reverse("admin:allocations_member_change", args=[bob.pk])).content.decode()
    assert "may not use</b> lab/secret" in page and "restricted to groups the member is not in" in page
    page = admin_client.get(reverse("admin:allocations_member_change", args=[ann.pk])).content.decode()
    assert "may use</b> lab/secret" in page and "research" in page


def test_the_group_page_and_list_show_the_budget_and_this_months_spend(admin_client):
    from decimal import Decimal

    from django.utils import timezone

    from quota.models import GroupUsageCounter
    from quota.periods import period_start_date

    group = group_create(data={"name": "Research", "slug": "research", "quota_cost_usd_per_month": "10"})
    GroupUsageCounter.objects.create(
        group=group, period_start=period_start_date(timezone.now()), cost_used=Decimal("9"), tokens_used=1234
    )
    page = admin_client.get(reverse("admin:allocations_group_change", args=[group.pk])).content.decode()
    assert "$9.00 / $10.00 (90 %)" in page and "near cap" in page and "1,234 / no cap" in page
    listing = admin_client.get(reverse("admin:allocations_group_changelist")).content.decode()
    assert "$9.00 / $10.00 (90 %)" in listing


def test_the_group_page_reads_in_zh_hant(admin_client):
    group = group_create(data={"name": "Research", "slug": "research", "quota_cost_usd_per_month": "10"})
    admin_client.cookies["django_language"] = "zh-hant"
    page = admin_client.get(reverse("admin:allocations_group_change", args=[group.pk])).content.decode()
    assert "本月花費 / 預算" in page and "本月 tokens / 配額" in page and "無上限" in page
