import pytest
from django.core.cache import cache

from tests.portal.conftest import (  # noqa: F401  (fixtures shared with the portal's tests)
    _fast_password_hashing,
    alice,
    alice_alloc,
    alice_client,
    alice_csrf_client,
    bob,
    bob_alloc,
    bob_client,
)


@pytest.fixture(autouse=True)
def _fresh_counters():
    """Rate-limit counters live in the shared cache: each test starts from zero."""
    cache.clear()
    yield
    cache.clear()
