"""Model access (SPEC 10, preflight step 5a) through the real server and the openai SDK: open,
restricted, allowed, denied (deny wins), no groups; `/v1/models` lists only usable models; a change
of membership or policy is seen by the next call of a warm key."""

import openai
import pytest

from allocations.groups import group_create, group_members_change, model_access_update
from quota.models import CallRecord, Reservation

from .conftest import CHAT_MESSAGES, chat_call, record_of


def _group(slug, *members):
    group = group_create(data={"name": slug.title(), "slug": slug})
    group_members_change(group=group, add=[m.username for m in members])
    return group


def _refused(world, allocation, rid):
    with pytest.raises(openai.PermissionDeniedError) as refused:
        chat_call(world, allocation, rid)
    assert refused.value.status_code == 403
    assert refused.value.body["code"] == "model_forbidden"
    record = record_of(rid)
    assert (record.outcome, record.error_code, record.allocation_id) == (
        "rejected_model_forbidden",
        "model_forbidden",
        allocation.pk,
    )
    assert not Reservation.objects.exists()
    return refused.value


def test_an_open_model_serves_a_member_with_no_groups(world):
    allocation = world.allocation()
    assert chat_call(world, allocation, "open-1").choices
    assert record_of("open-1").outcome == "success"


def test_a_restricted_model_refuses_a_member_outside_its_groups(world):
    allocation = world.allocation()
    _group("research")
    model_access_update(model=allocation.model, changes={"access": "restricted", "allowed_groups": ["research"]})
    error = _refused(world, allocation, "restricted-1")
    assert "restricted" in error.message


def test_a_restricted_model_serves_a_member_of_an_allowed_group(world):
    allocation = world.allocation()
    _group("research", world.member)
    model_access_update(model=allocation.model, changes={"access": "restricted", "allowed_groups": ["research"]})
    assert chat_call(world, allocation, "allowed-1").choices


def test_a_denied_group_wins_over_an_allowed_one_and_over_an_open_model(world):
    allocation = world.allocation()
    _group("research", world.member)
    _group("contractors", world.member)
    model_access_update(model=allocation.model, changes={"denied_groups": ["contractors"]})
    _refused(world, allocation, "deny-open")
    model_access_update(
        model=allocation.model,
        changes={"access": "restricted", "allowed_groups": ["research"], "denied_groups": ["contractors"]},
    )
    CallRecord.objects.all().delete()
    error = _refused(world, allocation, "deny-restricted")
    assert "contractors" in error.message


def test_v1_models_lists_only_the_models_the_member_may_use(world):
    usable, forbidden = world.allocation(), world.allocation("gpt-4o")
    from allocations.keys import api_key_create  # noqa: PLC0415

    _, plaintext = api_key_create(member=world.member, name="both", allocations=[usable, forbidden])
    client = world.client(plaintext)
    assert {m.id for m in client.models.list()} == {usable.model.slug, forbidden.model.slug}
    _group("research")
    model_access_update(model=forbidden.model, changes={"access": "restricted", "allowed_groups": ["research"]})
    assert [m.id for m in client.models.list()] == [usable.model.slug]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(forbidden.model.slug)


def test_a_membership_change_is_seen_by_the_next_warm_call(world):
    allocation = world.allocation()
    research = _group("research")
    model_access_update(model=allocation.model, changes={"access": "restricted", "allowed_groups": ["research"]})
    _refused(world, allocation, "warm-1")
    group_members_change(group=research, add=[world.member.username])
    client = world.client(allocation.plaintext)
    for n in range(3):  # warm: the key's snapshot is cached after the first
        client.chat.completions.create(model=allocation.model.slug, messages=CHAT_MESSAGES)
        assert CallRecord.objects.filter(outcome="success").count() == n + 1
    group_members_change(group=research, remove=[world.member.username])
    CallRecord.objects.all().delete()
    _refused(world, allocation, "warm-2")


def test_a_policy_change_is_seen_by_the_next_warm_call(world):
    allocation = world.allocation()
    for rid in ("policy-1", "policy-2"):
        chat_call(world, allocation, rid)
    model_access_update(model=allocation.model, changes={"access": "restricted"})
    _refused(world, allocation, "policy-3")
    model_access_update(model=allocation.model, changes={"access": "open"})
    assert chat_call(world, allocation, "policy-4").choices
