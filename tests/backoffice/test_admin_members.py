"""Staff member pages: one page with allocations, keys and calls; create with a first allocation."""

from decimal import Decimal

import pytest

from allocations.models import Allocation, AuditEvent, Member
from tests.factories import AllocationFactory, CatalogModelFactory, MemberFactory, make_key
from tests.portal.conftest import dollar_price, settle_call


@pytest.fixture
def mei(db):
    member = MemberFactory(username="mei", email="mei@example.com")
    model = CatalogModelFactory(slug="openai/gpt-4o-mini")
    dollar_price(model)
    allocation = AllocationFactory(member=member, model=model, quota_cost_usd_per_month=Decimal("0.01"))
    settle_call(allocation, cost_usd="0.0115")
    make_key(member=member, allocations=[allocation], name="laptop")
    return member


def test_the_member_page_shows_allocations_keys_and_calls_with_links(admin_client, mei):
    html = admin_client.get(f"/admin/members/{mei.pk}/").content.decode()
    allocation = Allocation.objects.get(member=mei)
    assert "$0.0115 / $0.01 (115 %)" in html  # the portal's precision, never $0.01 / $0.01
    assert f"/admin/allocations/allocation/{allocation.pk}/change/" in html
    assert "laptop" in html and "openai/gpt-4o-mini" in html
    assert "/admin/quota/callrecord/" in html and "success" in html


def test_staff_reset_a_members_password_and_it_is_audited(admin_client, mei):
    response = admin_client.post(
        f"/admin/members/{mei.pk}/", {"password": "a-new-long-passphrase", "again": "a-new-long-passphrase"}
    )
    assert response.status_code == 302
    mei.refresh_from_db()
    assert mei.check_password("a-new-long-passphrase")
    assert AuditEvent.objects.filter(action="member_password_set", target_id=str(mei.pk)).count() == 1


def test_a_mismatched_password_changes_nothing(admin_client, mei):
    response = admin_client.post(f"/admin/members/{mei.pk}/", {"password": "a-new-long-passphrase", "again": "x"})
    assert response.status_code == 200 and "The two passwords differ." in response.content.decode()
    assert not AuditEvent.objects.filter(action="member_password_set").exists()


def test_plain_staff_cannot_reset_a_superusers_password(client, db):
    boss = MemberFactory(username="boss", is_staff=True, is_superuser=True)
    helper = MemberFactory(username="helper", is_staff=True)
    client.force_login(helper)
    client.post(f"/admin/members/{boss.pk}/", {"password": "a-new-long-passphrase", "again": "a-new-long-passphrase"})
    boss.refresh_from_db()
    assert not boss.check_password("a-new-long-passphrase")


def test_a_member_and_a_first_allocation_are_created_in_one_form(admin_client, db):
    model = CatalogModelFactory(slug="openai/gpt-4o-mini")
    response = admin_client.post(
        "/admin/members/new/",
        {"username": "Newbie", "email": "", "password": "", "model": model.pk, "quota_cost_usd_per_month": "5"},
    )
    member = Member.objects.get(username="newbie")
    assert response.status_code == 302 and response["Location"] == f"/admin/members/{member.pk}/"
    allocation = Allocation.objects.get(member=member)
    assert allocation.quota_cost_usd_per_month == Decimal("5")
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"member_created", "allocation_created"} <= actions


def test_a_bad_cap_creates_neither_the_member_nor_the_allocation(admin_client, db):
    model = CatalogModelFactory(slug="openai/gpt-4o-mini")
    response = admin_client.post(
        "/admin/members/new/", {"username": "newbie", "model": model.pk, "quota_cost_usd_per_month": "0.0000000001"}
    )
    assert response.status_code == 200
    assert "rounds to $0" in response.content.decode()
    assert not Member.objects.filter(username="newbie").exists()
    assert not AuditEvent.objects.filter(action="member_created").exists()
