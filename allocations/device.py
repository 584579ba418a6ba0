"""Device sign-in (OAuth 2.0 device authorization grant, RFC 8628) for command-line tools.

A tool asks for a device code and a user code (`device_start`), shows the user code and the
verification page, and polls (`device_poll`). A signed-in member approves with a choice of their
own allocations (`device_approve`: a key named after the tool's label is minted then, and kept
encrypted until the tool collects it) or denies (`device_deny`). The key is delivered once: the
ciphertext is wiped as it is handed over and any later poll answers `expired_token`.

Polling faster than the current interval answers `slow_down` and adds 5 seconds to the interval
for every later poll (RFC 8628 section 3.5).
"""

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.utils import timezone

from . import crypto
from .audit import audit_record
from .exceptions import InvalidTransition, NotFound
from .keys import api_key_create
from .models import Allocation, DeviceAuthorization, Member

EXPIRES_IN_S = 600
INTERVAL_S = 5
SLOW_DOWN_STEP_S = 5
# RFC 8628 section 6.1: consonants only (no vowels, so no words; no 0/O or 1/I to confuse).
USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
USER_CODE_LENGTH = 8
DEFAULT_LABEL = "Device sign-in"
Status = DeviceAuthorization.Status


# Per client address and window: device codes asked for, token polls, wrong user codes entered.
# A tool polling every 5 s makes 120 polls in 10 minutes; a user code has 20^8 values, so ten
# wrong guesses per address per window make guessing one hopeless within its 10 minutes.
RATE_LIMITS = {"code": 30, "token": 600, "user_code": 10}
RATE_WINDOW_S = 600


def device_rate_exceeded(*, kind: str, ip: str | None, count: bool = True) -> bool:
    """Whether `ip` is past its limit for `kind`; counts this request first unless `count` is False.
    The counters live in the shared cache (Redis), so the limit holds across processes."""
    limit = getattr(settings, "GATEWAY_DEVICE_RATE_LIMITS", RATE_LIMITS)[kind]
    key = f"device:{kind}:ip:{ip or 'unknown'}"
    if not count:
        return (cache.get(key) or 0) >= limit
    cache.add(key, 0, timeout=RATE_WINDOW_S)  # add() starts the window only on the first count
    try:
        return cache.incr(key) > limit
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=RATE_WINDOW_S)
        return False


class DeviceGrantError(Exception):
    """A token-endpoint refusal; `code` is the OAuth `error` value (RFC 8628 section 3.5, RFC 6749 5.2)."""

    def __init__(self, code: str, description: str = "") -> None:
        super().__init__(code)
        self.code = code
        self.description = description


@dataclass(frozen=True)
class DeviceStart:
    authorization: DeviceAuthorization
    device_code: str


def _hash(device_code: str) -> str:
    return hashlib.sha256(device_code.encode()).hexdigest()


def user_code_normalise(value: str) -> str:
    """What the member typed, upper-cased and stripped of dashes, spaces and anything not in the alphabet."""
    return "".join(c for c in (value or "").upper() if c in USER_CODE_ALPHABET)


def user_code_display(code: str) -> str:
    return f"{code[:4]}-{code[4:]}"


def _new_user_code() -> str:
    return "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(USER_CODE_LENGTH))


def device_start(*, label: str = "", requested_from: str | None = None, now: datetime | None = None) -> DeviceStart:
    """A new pending grant (RFC 8628 section 3.2). The device code exists only in the return value."""
    now = now or timezone.now()
    label = " ".join((label or "").split())[:100]
    device_code = secrets.token_urlsafe(32)
    for _ in range(5):  # a user code collision is rare (20^8 codes); draw again
        try:
            with transaction.atomic():
                authorization = DeviceAuthorization.objects.create(
                    device_code_hash=_hash(device_code),
                    user_code=_new_user_code(),
                    label=label,
                    interval_s=INTERVAL_S,
                    expires_at=now + timedelta(seconds=EXPIRES_IN_S),
                    requested_from=requested_from,
                )
            return DeviceStart(authorization=authorization, device_code=device_code)
        except IntegrityError:
            continue
    raise RuntimeError("could not draw a free user code")


def device_pending(*, user_code: str, now: datetime | None = None) -> DeviceAuthorization:
    """The pending, unexpired grant with this user code; NotFound otherwise."""
    now = now or timezone.now()
    code = user_code_normalise(user_code)
    found = DeviceAuthorization.objects.filter(user_code=code, status=Status.PENDING, expires_at__gt=now).first()
    if len(code) != USER_CODE_LENGTH or found is None:
        raise NotFound("no pending device sign-in has this code; it may have expired")
    return found


def _locked_pending(*, user_code: str, now: datetime) -> DeviceAuthorization:
    authorization = device_pending(user_code=user_code, now=now)
    authorization = DeviceAuthorization.objects.select_for_update().get(pk=authorization.pk)
    if authorization.status != Status.PENDING:
        raise InvalidTransition("this device sign-in was already approved or denied")
    return authorization


def _model_for(allocations: list[Allocation]) -> str:
    """The model a tool should start with: the first chat model chosen, else the first chosen."""
    chat = [a for a in allocations if a.model.kind == "chat"]
    return (chat or allocations)[0].model.slug


def device_approve(
    *, member: Member, user_code: str, allocations: Iterable[Allocation], now: datetime | None = None
) -> DeviceAuthorization:
    """Mints the key (named after the label, scoped to `allocations`, the member's own) and keeps
    it encrypted for the device's next poll."""
    now = now or timezone.now()
    allocations = list(allocations)
    with transaction.atomic():
        authorization = _locked_pending(user_code=user_code, now=now)
        key, plaintext = api_key_create(
            member=member, name=authorization.label or DEFAULT_LABEL, allocations=allocations, actor=member, now=now
        )
        authorization.status = Status.APPROVED
        authorization.member = member
        authorization.api_key = key
        authorization.key_encrypted = crypto.encrypt(plaintext)
        authorization.model_slug = _model_for(allocations)
        authorization.decided_at = now
        authorization.save()
        audit_record(
            actor=member,
            action="device_sign_in_approved",
            target=authorization,
            now=now,
            after={"label": authorization.label, "key": str(key.pk), "allocations": [str(a.pk) for a in allocations]},
        )
    return authorization


def device_deny(*, member: Member, user_code: str, now: datetime | None = None) -> DeviceAuthorization:
    now = now or timezone.now()
    with transaction.atomic():
        authorization = _locked_pending(user_code=user_code, now=now)
        authorization.status = Status.DENIED
        authorization.member = member
        authorization.decided_at = now
        authorization.save(update_fields=["status", "member", "decided_at"])
        audit_record(
            actor=member,
            action="device_sign_in_denied",
            target=authorization,
            now=now,
            after={"label": authorization.label},
        )
    return authorization


def _pace_error(authorization: DeviceAuthorization, now: datetime) -> DeviceGrantError:
    """RFC 8628 section 3.5: a poll sooner than `interval` after the last one is slow_down, and
    the interval grows by 5 seconds for this and every later poll."""
    last = authorization.last_polled_at
    authorization.last_polled_at = now
    if last is not None and now - last < timedelta(seconds=authorization.interval_s):
        authorization.interval_s += SLOW_DOWN_STEP_S
        authorization.save(update_fields=["last_polled_at", "interval_s"])
        return DeviceGrantError("slow_down", f"poll at most every {authorization.interval_s} seconds")
    authorization.save(update_fields=["last_polled_at"])
    return DeviceGrantError("authorization_pending", "waiting for the member to approve")


def device_poll(*, device_code: str, now: datetime | None = None) -> dict:
    """The token response for one poll: `{access_token, token_type, model}` once, after approval;
    a DeviceGrantError with the RFC's error code otherwise."""
    now = now or timezone.now()
    with transaction.atomic():  # the refusal is raised after commit: a slow_down's new interval stays
        outcome = _poll_locked(device_code, now)
    if isinstance(outcome, DeviceGrantError):
        raise outcome
    return outcome


def _poll_locked(device_code: str, now: datetime) -> dict | DeviceGrantError:
    authorization = (
        DeviceAuthorization.objects.select_for_update().filter(device_code_hash=_hash(device_code or "")).first()
    )
    if authorization is None:
        return DeviceGrantError("invalid_grant", "unknown device_code")
    if authorization.status == Status.DELIVERED or now >= authorization.expires_at:
        if authorization.key_encrypted:  # approved but never collected: nothing waits any longer
            authorization.key_encrypted = ""
            authorization.save(update_fields=["key_encrypted"])
        return DeviceGrantError("expired_token", "the device code has expired; start again")
    if authorization.status == Status.DENIED:
        return DeviceGrantError("access_denied", "the sign-in was denied")
    if authorization.status == Status.PENDING:
        return _pace_error(authorization, now)
    return _deliver(authorization, now)


def _deliver(authorization: DeviceAuthorization, now: datetime) -> dict:
    plaintext = crypto.decrypt(authorization.key_encrypted)
    authorization.status = Status.DELIVERED
    authorization.key_encrypted = ""
    authorization.delivered_at = now
    authorization.last_polled_at = now
    authorization.save(update_fields=["status", "key_encrypted", "delivered_at", "last_polled_at"])
    audit_record(
        actor=authorization.member,
        action="device_sign_in_delivered",
        target=authorization,
        now=now,
        after={"key": str(authorization.api_key_id)},
    )
    return {"access_token": plaintext, "token_type": "bearer", "model": authorization.model_slug}
