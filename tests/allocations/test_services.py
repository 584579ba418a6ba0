"""The audited services: state rules, one audit event per write with correct before/after, keys, scope."""

from decimal import Decimal

import pytest

from allocations import crypto, services
from allocations.access import key_scope
from allocations.audit import audit_context
from allocations.exceptions import BadRequest, Forbidden, InvalidTransition, ScopeConflict, ScopeForbidden, Unauthorized
from allocations.models import AdminToken, Allocation, ApiKey, AuditEvent
from quota.services import price_version_add
from tests.factories import AllocationFactory, CatalogModelFactory, ProviderFactory

pytestmark = pytest.mark.django_db

S = Allocation.Status


def only_event(**filters) -> AuditEvent:
    events = list(AuditEvent.objects.filter(**filters))
    assert len(events) == 1, [(e.action, e.target_type) for e in events]
    return events[0]


def set_status(allocation, status):
    Allocation.objects.filter(pk=allocation.pk).update(status=status)
    allocation.refresh_from_db()


# --- state transitions ----------------------------------------------------------------------------------

ALLOWED = [
    (services.allocation_pause, S.ACTIVE, S.PAUSED, "allocation_paused"),
    (services.allocation_resume, S.PAUSED, S.ACTIVE, "allocation_resumed"),
    (services.allocation_revoke, S.ACTIVE, S.REVOKED, "allocation_revoked"),
    (services.allocation_revoke, S.PAUSED, S.REVOKED, "allocation_revoked"),
    (services.allocation_revoke, S.QUARANTINED, S.REVOKED, "allocation_revoked"),
    (services.allocation_unquarantine, S.QUARANTINED, S.ACTIVE, "allocation_unquarantined"),
    (
        lambda **kw: services.allocation_quarantine(reason="spike", **kw),
        S.ACTIVE,
        S.QUARANTINED,
        "allocation_quarantined",
    ),
]


@pytest.mark.parametrize(("service", "start", "end", "action"), ALLOWED)
def test_each_allowed_transition_changes_status_and_writes_one_audit_event(
    allocation, staff, service, start, end, action
):
    set_status(allocation, start)
    service(allocation=allocation, actor=staff)
    allocation.refresh_from_db()
    assert allocation.status == end
    event = only_event(target_id=str(allocation.pk))
    assert event.action == action
    assert event.actor == staff and event.actor_label == "admin"
    assert event.before["status"] == start and event.after["status"] == end


FORBIDDEN = [
    (services.allocation_pause, [S.PAUSED, S.QUARANTINED, S.REVOKED]),
    (services.allocation_resume, [S.ACTIVE, S.QUARANTINED, S.REVOKED]),
    (services.allocation_revoke, [S.REVOKED]),
    (services.allocation_unquarantine, [S.ACTIVE, S.PAUSED, S.REVOKED]),
]


@pytest.mark.parametrize(("service", "start"), [(service, start) for service, starts in FORBIDDEN for start in starts])
def test_a_forbidden_transition_raises_and_changes_and_audits_nothing(allocation, service, start):
    set_status(allocation, start)
    with pytest.raises(InvalidTransition):
        service(allocation=allocation)
    allocation.refresh_from_db()
    assert allocation.status == start
    assert not AuditEvent.objects.exists()


def test_revoked_is_terminal(allocation):
    services.allocation_revoke(allocation=allocation)
    for service in (services.allocation_pause, services.allocation_resume, services.allocation_unquarantine):
        with pytest.raises(InvalidTransition):
            service(allocation=allocation)


def test_a_member_cannot_resume_an_admin_pause_but_an_admin_can_resume_a_member_pause(allocation):
    services.allocation_pause(allocation=allocation, by="admin")
    with pytest.raises(Forbidden):
        services.allocation_resume(allocation=allocation, by="member")
    assert Allocation.objects.get(pk=allocation.pk).status == S.PAUSED
    services.allocation_resume(allocation=allocation, by="admin")
    services.allocation_pause(allocation=allocation, by="member")
    assert Allocation.objects.get(pk=allocation.pk).paused_by == "member"
    services.allocation_resume(allocation=allocation, by="admin")
    assert Allocation.objects.get(pk=allocation.pk).status == S.ACTIVE


# --- one audit event per service, with before and after ----------------------------------------------


def test_allocation_create_audits_the_allocation_and_its_default_key(member, staff):
    model = CatalogModelFactory()
    allocation, key, plaintext = services.allocation_create(
        member=member, model=model, quota_tokens_per_month=1000, quota_cost_usd_per_month="2.5", actor=staff
    )
    created = only_event(action="allocation_created")
    assert created.before is None
    assert created.after["quota_cost_usd_per_month"] == "2.500000000"
    assert created.after["quota_tokens_per_month"] == 1000 and created.after["member"] == "alice"
    key_event = only_event(action="key_created")
    assert key_event.target_id == str(key.pk) and key_event.after["allocations"] == [str(allocation.pk)]
    assert AuditEvent.objects.count() == 2


def test_cap_updates_write_one_event_per_cap_with_before_and_after(allocation, staff):
    with audit_context(source_ip="10.0.0.1"):
        services.allocation_update(
            allocation=allocation,
            changes={"quota_cost_usd_per_month": "10", "quota_tokens_per_month": 500},
            actor=staff,
        )
    cost = only_event(action="allocation_cost_quota_updated")
    assert cost.before == {"quota_cost_usd_per_month": None}
    assert cost.after == {"quota_cost_usd_per_month": "10.000000000"}
    assert cost.source_ip == "10.0.0.1"
    tokens = only_event(action="allocation_token_quota_updated")
    assert tokens.before == {"quota_tokens_per_month": None} and tokens.after == {"quota_tokens_per_month": 500}
    assert AuditEvent.objects.count() == 2


def test_a_cap_of_zero_is_audited_as_a_decimal_string_never_in_exponent_form(allocation, staff):
    services.allocation_update(allocation=allocation, changes={"quota_cost_usd_per_month": "0"}, actor=staff)
    assert only_event(action="allocation_cost_quota_updated").after == {"quota_cost_usd_per_month": "0.000000000"}


def test_the_smallest_stored_cap_is_accepted(allocation):
    services.allocation_update(allocation=allocation, changes={"quota_cost_usd_per_month": "0.000000001"})
    assert Allocation.objects.get(pk=allocation.pk).quota_cost_usd_per_month == Decimal("0.000000001")


def test_an_update_that_changes_nothing_writes_no_event(allocation):
    services.allocation_update(allocation=allocation, changes={"quota_cost_usd_per_month": None, "note": ""})
    assert not AuditEvent.objects.exists()


def test_other_allocation_fields_write_one_allocation_updated_event(allocation):
    services.allocation_update(allocation=allocation, changes={"note": "vip", "quota_locked": True})
    event = only_event(action="allocation_updated")
    assert event.before == {"note": "", "quota_locked": False}
    assert event.after == {"note": "vip", "quota_locked": True}


@pytest.mark.parametrize(
    ("call", "action", "before", "after"),
    [
        (
            lambda m: services.member_set_active(member=m, is_active=False),
            "member_disabled",
            {"is_active": True},
            {"is_active": False},
        ),
        (
            lambda m: services.member_set_password(member=m, password="x-long-pass"),
            "member_password_set",
            None,
            {"password": "changed"},
        ),
        (
            lambda m: services.member_set_roles(member=m, is_staff=True, is_superuser=False),
            "member_roles_updated",
            {"is_staff": False, "is_superuser": False},
            {"is_staff": True, "is_superuser": False},
        ),
    ],
)
def test_member_services_audit_once(member, call, action, before, after):
    call(member)
    event = only_event()
    assert (event.action, event.before, event.after) == (action, before, after)


def test_member_create_audits_and_never_records_the_password(staff):
    member = services.member_create(username="Carol", email="C@X.org", password="secret-pass-1", actor=staff)
    assert member.username == "carol" and member.check_password("secret-pass-1")
    event = only_event()
    assert event.action == "member_created" and event.after["username"] == "carol"
    assert "secret-pass-1" not in str(event.after)
    with pytest.raises(BadRequest):
        services.member_create(username="CAROL")
    assert AuditEvent.objects.count() == 1


def test_provider_services_audit_fingerprints_never_keys():
    provider = services.provider_create(name="p", kind="openai", base_url="https://x.test/v1", api_key="sk-secret-1")
    created = only_event(action="provider_created")
    assert created.after["fingerprint"] == provider.key_fingerprint == ApiKey.hash("sk-secret-1")[:12]
    assert "sk-secret-1" not in str(created.after) and "sk-secret-1" not in provider.api_key_encrypted
    assert crypto.provider_api_key(provider) == "sk-secret-1"
    services.provider_rotate_key(provider=provider, api_key="sk-secret-2")
    assert crypto.provider_api_key(provider) == "sk-secret-2"
    rotated = only_event(action="provider_key_rotated")
    assert rotated.before["fingerprint"] == created.after["fingerprint"] != rotated.after["fingerprint"]
    services.provider_update(provider=provider, changes={"base_url": "https://y.test/v1"}, api_key="sk-secret-3")
    updated = only_event(action="provider_updated")
    assert updated.before == {"base_url": "https://x.test/v1"} and updated.after == {"base_url": "https://y.test/v1"}
    services.provider_set_status(provider=provider, status="disabled")
    assert only_event(action="provider_status_updated").after == {"status": "disabled"}


def test_a_provider_moves_to_another_base_url_only_with_its_key_entered_again():
    provider = services.provider_create(name="p", kind="openai", base_url="https://x.test/v1", api_key="sk-secret-1")
    with pytest.raises(BadRequest) as refused:
        services.provider_update(provider=provider, changes={"base_url": "https://evil.test/v1"})
    assert refused.value.status == 400 and "api_key" in refused.value.fields
    provider.refresh_from_db()
    assert provider.base_url == "https://x.test/v1" and crypto.provider_api_key(provider) == "sk-secret-1"
    assert not AuditEvent.objects.filter(action="provider_updated").exists()

    services.provider_update(provider=provider, changes={"name": "p2"})  # other fields need no key
    services.provider_update(provider=provider, changes={"base_url": "https://y.test/v1"}, api_key="sk-secret-2")
    provider.refresh_from_db()
    assert provider.base_url == "https://y.test/v1" and crypto.provider_api_key(provider) == "sk-secret-2"
    assert only_event(action="provider_key_rotated").after == {"fingerprint": ApiKey.hash("sk-secret-2")[:12]}


def test_model_services_audit_once():
    model = services.model_create(slug="p/m", provider=ProviderFactory(), upstream_name="m", kind="chat")
    assert only_event(action="model_created").after["slug"] == "p/m"
    services.model_set_active(model=model, is_active=False)
    event = only_event(action="model_updated")
    assert event.before == {"is_active": True} and event.after == {"is_active": False}


def test_price_version_add_audits_the_rates_as_decimal_strings(staff):
    model = CatalogModelFactory()
    price_version_add(model=model, input_per_1m="0.15", output_per_1m="0.6", actor=staff)
    event = only_event(action="price_version_added")
    assert event.after["input_per_1m"] == "0.15" and event.after["output_per_1m"] == "0.6"
    assert event.after["model"] == model.slug and event.actor == staff


def test_admin_token_create_and_revoke_audit_once(staff):
    plaintext = services.admin_token_create(user=staff)
    token = AdminToken.objects.get()
    assert token.token_hash == ApiKey.hash(plaintext) and plaintext.startswith(token.prefix)
    assert only_event(action="admin_token_created").after == {"prefix": token.prefix}
    services.admin_token_revoke(token=token, actor=staff)
    assert only_event(action="admin_token_revoked").after == {"revoked": True}


# --- keys --------------------------------------------------------------------------------------------


def test_a_key_is_shown_once_stored_hashed_and_listed_by_prefix(allocation, member):
    key, plaintext = services.api_key_create(member=member, name="ci", allocations=[allocation])
    assert plaintext.startswith("sk-gw-") and len(plaintext) == 6 + 43
    key.refresh_from_db()
    assert key.key_hash == ApiKey.hash(plaintext) and plaintext not in {key.key_hash, key.name}
    assert key.prefix == plaintext[:12] and len(key.prefix) == 12
    event = only_event(action="key_created")
    assert plaintext not in str(event.after) and event.after["prefix"] == key.prefix


@pytest.mark.django_db(transaction=True)  # the auth generation moves on commit
def test_rotate_invalidates_the_old_key_and_keeps_name_and_scope(allocation, member):
    key, old = services.api_key_create(member=member, name="ci", allocations=[allocation])
    key_scope(old)
    key, new = services.api_key_rotate(key=key)
    assert new != old
    with pytest.raises(Unauthorized):
        key_scope(old)
    assert key_scope(new).allocations[0].allocation_id == str(allocation.pk)
    key.refresh_from_db()
    assert key.name == "ci" and key.prefix == new[:12]
    event = only_event(action="key_rotated")
    assert event.before == {"prefix": old[:12]} and event.after == {"prefix": new[:12]}


def test_revoke_is_soft_and_a_revoked_key_cannot_be_rotated(allocation, member):
    key, plaintext = services.api_key_create(member=member, name="ci", allocations=[allocation])
    services.api_key_revoke(key=key)
    assert ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=False).exists()
    with pytest.raises(Unauthorized):
        key_scope(plaintext)
    with pytest.raises(InvalidTransition):
        services.api_key_rotate(key=key)


def test_rotating_the_default_key_invalidates_the_minted_one(member):
    allocation, _key, first = services.allocation_create(member=member, model=CatalogModelFactory())
    _key, second = services.allocation_rotate_default_key(allocation=allocation)
    with pytest.raises(Unauthorized):
        key_scope(first)
    assert key_scope(second)


# --- scope rules ----------------------------------------------------------------------------------------


def test_a_key_cannot_hold_another_members_allocation(member, other_member):
    theirs = AllocationFactory(member=other_member)
    with pytest.raises(ScopeForbidden) as error:
        services.api_key_create(member=member, name="x", allocations=[theirs])
    assert error.value.status == 403
    assert not ApiKey.objects.filter(member=member).exists()


def test_a_key_cannot_hold_two_allocations_of_one_model(member):
    model = CatalogModelFactory()
    a, b = AllocationFactory(member=member, model=model), AllocationFactory(member=member, model=model)
    with pytest.raises(ScopeConflict) as error:
        services.api_key_create(member=member, name="x", allocations=[a, b])
    assert error.value.status == 409
    assert not ApiKey.objects.filter(member=member).exists()


def test_a_key_needs_at_least_one_allocation_and_no_revoked_one(member, allocation):
    with pytest.raises(BadRequest):
        services.api_key_create(member=member, name="x", allocations=[])
    services.allocation_revoke(allocation=allocation)
    with pytest.raises(BadRequest):
        services.api_key_create(member=member, name="x", allocations=[allocation])


# --- cap validation in the service ---------------------------------------------------------------------

BAD_CAPS = [-1, "-1", "abc", "1e400", 10**20, "NaN", "Infinity", True, "1e12", "0.0000000001", "0.0000000005"]


@pytest.mark.parametrize("value", BAD_CAPS)
def test_a_bad_cost_cap_is_a_field_error_and_nothing_is_saved(allocation, value):
    with pytest.raises(BadRequest) as error:
        services.allocation_update(allocation=allocation, changes={"quota_cost_usd_per_month": value})
    assert "quota_cost_usd_per_month" in error.value.fields
    assert Allocation.objects.get(pk=allocation.pk).quota_cost_usd_per_month is None
    assert not AuditEvent.objects.exists()


@pytest.mark.parametrize("value", [-1, "abc", "1e400", 10**20, "1.5", True])
def test_a_bad_token_quota_is_a_field_error(allocation, value):
    with pytest.raises(BadRequest) as error:
        services.allocation_update(allocation=allocation, changes={"quota_tokens_per_month": value})
    assert "quota_tokens_per_month" in error.value.fields


@pytest.mark.parametrize(
    ("value", "stored"), [("", None), (None, None), ("0", Decimal(0)), ("99999999999", Decimal("99999999999"))]
)
def test_blank_and_null_mean_no_cap_and_the_largest_cap_fits_the_column(allocation, value, stored):
    Allocation.objects.filter(pk=allocation.pk).update(quota_cost_usd_per_month=Decimal(7))
    allocation.refresh_from_db()
    services.allocation_update(allocation=allocation, changes={"quota_cost_usd_per_month": value})
    assert Allocation.objects.get(pk=allocation.pk).quota_cost_usd_per_month == stored


def test_one_bad_field_saves_none_of_the_others(allocation):
    with pytest.raises(BadRequest):
        services.allocation_update(allocation=allocation, changes={"note": "x", "quota_cost_usd_per_month": "-1"})
    assert Allocation.objects.get(pk=allocation.pk).note == ""


def test_a_revocation_is_seen_even_after_the_generation_row_was_lost(allocation, member):
    from django.db import connection

    from lib.cache import GENERATION_TABLE, auth_generation, bump_auth_generation

    key, plaintext = services.api_key_create(member=member, name="ci", allocations=[allocation])
    auth_generation()
    bump_auth_generation()
    key_scope(plaintext)  # snapshot cached under the current generation
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {GENERATION_TABLE}")  # noqa: S608 - the row lost (a restore)
    services.api_key_revoke(key=key)
    with pytest.raises(Unauthorized):
        key_scope(plaintext)
