import pytest


@pytest.fixture(autouse=True)
def _fast_hasher(fast_password_hasher):
    yield
