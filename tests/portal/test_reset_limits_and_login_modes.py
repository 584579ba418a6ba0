"""`/accounts/password_reset/` is limited per target address and per client address like sign-in,
and a refused password sign-in reads the same whether the password was right or wrong."""

import pytest
from django.core import mail
from django.test import Client

from tests.factories import MemberFactory
from tests.portal.conftest import PASSWORD

pytestmark = pytest.mark.django_db

RESET = "/accounts/password_reset/"


def _reset(email, address):
    return Client().post(RESET, {"email": email}, REMOTE_ADDR=address)


def _locks_out(scenario, attempts: int = 3) -> bool:
    """As in test_login: another xdist worker's cache flush can make one attempt miss the limit."""
    return any(scenario(n) for n in range(attempts))


def test_reset_mails_are_limited_per_target_address(settings):
    settings.PORTAL_RESET_MAX_PER_EMAIL = 3

    def scenario(n):
        mail.outbox.clear()
        member = MemberFactory(username=f"target{n}")
        for i in range(3):  # from three addresses: only the target's counter can trip
            assert _reset(member.email, f"10.{n}.1.{i}").status_code == 302
        refused = _reset(member.email, f"10.{n}.1.9")
        if refused.status_code != 429:
            return False
        assert "Too many password reset requests" in refused.content.decode()
        return len(mail.outbox) == 3

    assert _locks_out(scenario)
    assert _reset("someone.else@example.org", "10.7.7.7").status_code == 302


def test_reset_requests_are_limited_per_client_address_known_or_not(settings):
    settings.PORTAL_RESET_MAX_PER_IP = 3
    member = MemberFactory(username="kim")

    def scenario(n):
        for i in range(3):  # unknown addresses count too: the limit tells nothing about who exists
            _reset(f"nobody{n}-{i}@example.org", f"192.0.2.{n}")
        mail.outbox.clear()
        refused = _reset(member.email, f"192.0.2.{n}")
        return refused.status_code == 429 and mail.outbox == []

    assert _locks_out(scenario)
    assert _reset(member.email, "192.0.2.200").status_code == 302


@pytest.mark.parametrize("mode", ["staff", "off"])
def test_a_member_gets_the_same_refusal_for_a_right_and_a_wrong_password(settings, mode):
    settings.GATEWAY_PASSWORD_LOGIN = mode
    MemberFactory(username="mei")
    right = Client().post("/accounts/login/", {"username": "mei", "password": PASSWORD})
    wrong = Client().post("/accounts/login/", {"username": "mei", "password": "not-the-password"})
    assert right.status_code == wrong.status_code == 200
    refusal = [r.content.decode().split('<div class="form-errors"')[1].split("</div>")[0] for r in (right, wrong)]
    assert refusal[0] == refusal[1] and "use single sign-on" in refusal[0]


def test_with_password_login_for_staff_a_staff_member_still_signs_in(settings):
    settings.GATEWAY_PASSWORD_LOGIN = "staff"
    MemberFactory(username="boss", is_staff=True)
    assert Client().post("/accounts/login/", {"username": "boss", "password": PASSWORD}).status_code == 302
