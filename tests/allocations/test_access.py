import threading

import pytest
from django.db import connection, transaction

from allocations.access import allocation_check_status, key_scope
from allocations.exceptions import AllocationPaused, ModelMismatch, Unauthorized
from allocations.services import allocation_pause, api_key_revoke, member_set_active
from lib.cache import auth_generation
from tests.factories import AllocationFactory, CatalogModelFactory, make_key

pytestmark = pytest.mark.django_db


def test_it_resolves_slug_and_unambiguous_bare_name(member):
    a = AllocationFactory(member=member, model=CatalogModelFactory(slug="openai/gpt-4o-mini"))
    _, plaintext = make_key(member=member, allocations=[a])
    scope = key_scope(plaintext)
    assert scope.resolve("openai/gpt-4o-mini").allocation_id == str(a.pk)
    assert scope.resolve("gpt-4o-mini").allocation_id == str(a.pk)
    with pytest.raises(ModelMismatch, match="openai/gpt-4o-mini"):
        scope.resolve("gpt-5")


def test_a_bare_name_shared_by_two_models_in_scope_is_a_mismatch(member):
    a = AllocationFactory(member=member, model=CatalogModelFactory(slug="openai/gpt-4o"))
    b = AllocationFactory(member=member, model=CatalogModelFactory(slug="azure/gpt-4o"))
    _, plaintext = make_key(member=member, allocations=[a, b])
    with pytest.raises(ModelMismatch):
        key_scope(plaintext).resolve("gpt-4o")


@pytest.mark.django_db(transaction=True)  # the auth generation moves on commit
def test_revocations_are_seen_on_the_next_call(api_key, allocation, member):
    assert key_scope(api_key.plaintext)
    allocation_pause(allocation=allocation)
    with pytest.raises(AllocationPaused):
        allocation_check_status(key_scope(api_key.plaintext).allocations[0])
    member_set_active(member=member, is_active=False)
    with pytest.raises(Unauthorized):
        key_scope(api_key.plaintext)
    member_set_active(member=member, is_active=True)
    api_key_revoke(key=api_key)
    with pytest.raises(Unauthorized):
        key_scope(api_key.plaintext)


@pytest.mark.django_db(transaction=True)
def test_a_change_is_not_cached_as_current_before_it_commits(api_key):
    """A call that lands while a revocation is saved but uncommitted (the admin saves inside its own
    transaction) must not keep the old state under the new generation: the bump is part of the
    revocation's transaction, invisible to another connection until it commits."""
    before = auth_generation()
    with transaction.atomic():
        api_key_revoke(key=api_key)
        elsewhere = []
        thread = threading.Thread(target=lambda: (elsewhere.append(auth_generation()), connection.close()))
        thread.start()
        thread.join()
        assert elsewhere == [before]  # another thread still loads the committed, valid key under it
    assert auth_generation() != before
    with pytest.raises(Unauthorized):
        key_scope(api_key.plaintext)


def test_the_snapshot_never_prints_the_provider_key(api_key):
    assert "api_key" not in repr(key_scope(api_key.plaintext).allocations[0].provider)
