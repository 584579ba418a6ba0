"""Fernet encryption of provider credentials."""

import base64
import hashlib
from typing import TYPE_CHECKING

from cryptography.fernet import Fernet
from django.conf import settings

if TYPE_CHECKING:
    from .models import Provider


def _fernet() -> Fernet:
    key = settings.GATEWAY_ENCRYPTION_KEY
    if not key:
        # DEBUG only (settings refuse DEBUG=False without a key): derive a stable key.
        key = base64.urlsafe_b64encode(hashlib.sha256(settings.SECRET_KEY.encode()).digest()).decode()
    return Fernet(key)


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    return _fernet().decrypt(token.encode()).decode()


def provider_api_key(provider: "Provider") -> str:
    """The provider's plaintext API key ("" when none is stored: a keyless upstream)."""
    return decrypt(provider.api_key_encrypted) if provider.api_key_encrypted else ""
