import pytest
from django.core.cache import cache

from tests.factories import AllocationFactory, MemberFactory, PriceVersionFactory, make_key


@pytest.fixture(autouse=True)
def _clear_cache():
    cache.clear()
    yield


@pytest.fixture
def member(db):
    return MemberFactory(username="alice")


@pytest.fixture
def other_member(db):
    return MemberFactory(username="bob")


@pytest.fixture
def staff(db):
    return MemberFactory(username="admin", is_staff=True, is_superuser=True)


@pytest.fixture
def allocation(member):
    return AllocationFactory(member=member)


@pytest.fixture
def priced_allocation(allocation):
    PriceVersionFactory(model=allocation.model)
    return allocation


@pytest.fixture
def api_key(allocation):
    key, plaintext = make_key(member=allocation.member, allocations=[allocation])
    key.plaintext = plaintext
    return key


@pytest.fixture(autouse=True)
def fast_password_hasher(settings):
    """PBKDF2 costs up to a second per user on a busy 2-core CI box; hashing strength is not under test."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
