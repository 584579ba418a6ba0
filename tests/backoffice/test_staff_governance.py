"""Staff = admin in Django admin: every active staff member governs; superusers alone make or unmake
superusers and mint admin tokens for someone else; the last active admin stays; sign-in is limited
like the portal's; one-time secrets never travel in a cookie."""

import re

import pytest
from django.test import Client
from django.urls import reverse

from allocations import services
from allocations.models import AdminToken, ApiKey, AuditEvent, Member
from tests.factories import AllocationFactory, MemberFactory, audit_actions

pytestmark = pytest.mark.django_db

PASSWORD = "pw-for-tests-1"


@pytest.fixture
def plain_staff(db):
    """Staff made by the admin API's path: a staff member with no Django permission or group."""
    return services.member_create(username="sam", password=PASSWORD, is_staff=True)


@pytest.fixture
def staff_client(plain_staff):
    client = Client()
    client.force_login(plain_staff)
    return client


GOVERNED = [
    "allocations_member",
    "allocations_provider",
    "allocations_catalogmodel",
    "allocations_apikey",
    "allocations_admintoken",
    "allocations_auditevent",
    "allocations_allocation",
    "quota_priceversion",
    "quota_callrecord",
    "quota_poolconfig",
    "quota_anomalyconfig",
    "quota_rebalancelog",
]


def test_a_staff_member_who_is_not_a_superuser_sees_every_governed_list(staff_client):
    index = staff_client.get("/admin/")
    assert index.status_code == 200
    assert b"permission to view or edit anything" not in index.content
    for name in GOVERNED:
        assert staff_client.get(reverse(f"admin:{name}_changelist")).status_code in (200, 302), name


def test_a_plain_staff_member_edits_an_allocations_caps_in_admin(staff_client):
    allocation = AllocationFactory()
    url = reverse("admin:allocations_allocation_change", args=[allocation.pk])
    form = staff_client.get(url)
    assert form.status_code == 200 and b'name="quota_cost_usd_per_month"' in form.content
    response = staff_client.post(
        url,
        {
            "display_name": allocation.display_name,
            "quota_tokens_per_month": "",
            "quota_cost_usd_per_month": "7",
            "note": "",
        },
    )
    assert response.status_code == 302
    allocation.refresh_from_db()
    assert allocation.quota_cost_usd_per_month == 7
    event = AuditEvent.objects.get(action="allocation_cost_quota_updated")
    assert event.actor_label == "sam"


def test_a_plain_staff_member_runs_the_allocation_actions(staff_client):
    allocation = AllocationFactory()
    changelist = staff_client.get(reverse("admin:allocations_allocation_changelist"))
    assert b'value="pause"' in changelist.content
    response = staff_client.post(
        reverse("admin:allocations_allocation_changelist"), {"action": "pause", "_selected_action": [allocation.pk]}
    )
    assert response.status_code == 302
    allocation.refresh_from_db()
    assert allocation.status == "paused"


def test_a_disabled_staff_member_governs_nothing(plain_staff):
    client = Client()
    client.force_login(plain_staff)
    services.member_set_active(member=MemberFactory(username="root", is_staff=True), is_active=True)
    services.member_update(member=plain_staff, changes={"is_active": False})
    assert client.get(reverse("admin:allocations_allocation_changelist")).status_code == 302  # to the login


def test_only_a_superuser_makes_a_superuser_in_admin(staff_client, admin_client, member):
    url = reverse("admin:allocations_member_change", args=[member.pk])
    assert b'name="is_superuser"' not in staff_client.get(url).content
    staff_client.post(url, {"email": member.email, "is_active": "on", "is_superuser": "on"})
    assert not Member.objects.get(pk=member.pk).is_superuser
    assert b'name="is_superuser"' in admin_client.get(url).content
    admin_client.post(url, {"email": member.email, "is_active": "on", "is_staff": "on", "is_superuser": "on"})
    assert Member.objects.get(pk=member.pk).is_superuser
    add = staff_client.get(reverse("admin:allocations_member_add"))
    assert b'name="is_superuser"' not in add.content


def test_a_plain_staff_member_cannot_unmake_a_superuser(plain_staff):
    with pytest.raises(services.Forbidden):
        services.member_update(
            member=MemberFactory(username="root", is_superuser=True, is_staff=True),
            changes={"is_staff": False},
            actor=plain_staff,
        )
    assert Member.objects.get(username="root").is_superuser


def test_staff_changes_a_members_staff_flag_email_and_password_in_admin(admin_client, member):
    url = reverse("admin:allocations_member_change", args=[member.pk])
    response = admin_client.post(
        url, {"email": "New@Example.org", "is_active": "on", "is_staff": "on", "new_password": "s3cret-pass-2"}
    )
    assert response.status_code == 302
    member.refresh_from_db()
    assert member.is_staff and member.email == "new@example.org" and member.check_password("s3cret-pass-2")
    actions = audit_actions()
    assert {"member_roles_updated", "member_email_updated", "member_password_set"} <= set(actions)
    for event in AuditEvent.objects.filter(target_id=str(member.pk)):
        text = f"{event.before} {event.after}"
        assert "s3cret" not in text and member.password not in text and "md5$" not in text


def test_the_last_active_admin_cannot_be_disabled_or_demoted_in_admin(staff, admin_client):
    assert Member.objects.filter(is_active=True, is_staff=True).count() == 1
    url = reverse("admin:allocations_member_change", args=[staff.pk])
    for posted in (
        {"email": staff.email, "is_staff": "on", "is_superuser": "on"},
        {"email": staff.email, "is_active": "on"},
    ):
        response = admin_client.post(url, posted)
        assert response.status_code == 200 and b"last active admin" in response.content
    staff.refresh_from_db()
    assert staff.is_active and staff.is_staff and staff.is_superuser
    assert not AuditEvent.objects.filter(target_id=str(staff.pk)).exists()


def test_a_plain_staff_member_mints_admin_tokens_only_for_themselves(staff_client, plain_staff, staff):
    add = reverse("admin:allocations_admintoken_add")
    page = staff_client.get(add).content.decode()
    assert f'value="{plain_staff.pk}"' in page and f'value="{staff.pk}"' not in page
    assert staff_client.post(add, {"user": staff.pk}).status_code == 200  # not a valid choice
    assert not AdminToken.objects.filter(user=staff).exists()
    assert staff_client.post(add, {"user": plain_staff.pk, "expires_days": "7"}).status_code == 302
    token = AdminToken.objects.get(user=plain_staff)
    assert token.expires_at is not None
    with pytest.raises(services.Forbidden):
        services.admin_token_create(user=staff, actor=plain_staff)


def test_a_superuser_mints_for_another_admin_and_is_the_audit_actor(admin_client, staff, plain_staff):
    response = admin_client.post(reverse("admin:allocations_admintoken_add"), {"user": plain_staff.pk})
    assert response.status_code == 302
    event = AuditEvent.objects.get(action="admin_token_created")
    assert event.actor_id == staff.pk and event.actor_label == staff.username
    assert AdminToken.objects.get().user == plain_staff


def test_a_minted_token_is_shown_once_from_the_session_never_a_cookie(admin_client, staff):
    saved = admin_client.post(reverse("admin:allocations_admintoken_add"), {"user": staff.pk})
    assert saved.status_code == 302
    # Cookie message storage would set a signed (readable, not encrypted) `messages` cookie here.
    assert "messages" not in saved.cookies
    response = admin_client.get(saved["Location"])
    plaintext = re.search(r"gwadm-[A-Za-z0-9_-]{43}", response.content.decode()).group(0)
    assert AdminToken.objects.get().token_hash == ApiKey.hash(plaintext)
    assert all(plaintext not in cookie.value for cookie in admin_client.cookies.values())
    # Shown once: the next page no longer carries it.
    assert plaintext.encode() not in admin_client.get(reverse("admin:allocations_admintoken_changelist")).content


def test_admin_actions_declare_their_permissions():
    from django.contrib import admin as django_admin

    for model_admin in django_admin.site._registry.values():
        for action in model_admin.actions or ():
            func = getattr(model_admin, action) if isinstance(action, str) else action
            assert getattr(func, "allowed_permissions", None), f"{type(model_admin).__name__}.{action}"


def test_admin_login_shares_the_portals_failed_sign_in_limit(db, settings):
    """The counters live in the shared Redis cache: a process sharing its database can flush it
    (another run's test start) or clear a username's counter (its own sign-in of that username)
    mid-scenario, and make one attempt miss the lock-out; a real bug misses it every time. So up to
    three attempts, each with a staff member and a client address of its own."""
    settings.PORTAL_LOGIN_MAX_FAILURES_PER_USERNAME = 3

    def scenario(n: int) -> bool:
        staff = MemberFactory(username=f"locked-admin-{n}", is_staff=True, is_superuser=True)
        address = f"192.0.2.{n + 1}"
        for _ in range(3):
            Client(REMOTE_ADDR=address).post("/accounts/login/", {"username": staff.username, "password": "wrong"})
        response = Client(REMOTE_ADDR=address).post(
            "/admin/login/", {"username": staff.username, "password": PASSWORD, "next": "/admin/"}
        )
        return response.status_code == 200 and b"Too many failed sign-in attempts" in response.content

    assert any(scenario(n) for n in range(3))


def test_failures_at_the_admin_login_count_for_the_portal_login(staff, settings):
    settings.PORTAL_LOGIN_MAX_FAILURES_PER_USERNAME = 3
    for _ in range(3):
        Client().post("/admin/login/", {"username": staff.username, "password": "wrong", "next": "/admin/"})
    response = Client().post("/accounts/login/", {"username": staff.username, "password": PASSWORD})
    assert response.status_code == 429


@pytest.mark.parametrize(("mode", "signed_in"), [("all", True), ("staff", True), ("off", False)])
def test_the_password_login_switch_also_holds_at_the_admin_login(staff, settings, mode, signed_in):
    settings.GATEWAY_PASSWORD_LOGIN = mode
    client = Client()
    response = client.post("/admin/login/", {"username": staff.username, "password": PASSWORD, "next": "/admin/"})
    assert (response.status_code == 302) is signed_in
    assert (client.get("/admin/").status_code == 200) is signed_in
    if not signed_in:
        assert "use single sign-on" in response.content.decode()
