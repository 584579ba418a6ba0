import pytest
from django.test import Client, RequestFactory

from allocations.services import member_set_active
from lib.http import client_ip
from tests.factories import MemberFactory
from tests.portal.conftest import PASSWORD

pytestmark = pytest.mark.django_db

LOGIN = "/accounts/login/"
GENERIC = "Enter a correct username and password."


def _login(client, username, password, **headers):
    return client.post(LOGIN, {"username": username, "password": password}, **headers)


def test_a_member_logs_in_with_any_case_of_the_username(alice):
    client = Client()
    response = _login(client, "ALICE", PASSWORD)
    assert response.status_code == 302 and response["Location"] == "/portal/"
    assert client.get("/portal/").status_code == 200


def test_the_login_page_has_labelled_username_and_password_fields(db):
    html = Client().get(LOGIN).content.decode()
    assert '<label for="id_username">' in html and 'name="username"' in html
    assert '<label for="id_password">' in html and 'name="password"' in html


def test_unknown_user_wrong_password_and_disabled_member_get_the_same_message(alice):
    disabled = MemberFactory(username="carol")
    member_set_active(member=disabled, is_active=False)
    bodies = []
    for username, password in (("nobody", PASSWORD), ("alice", "wrong"), ("carol", PASSWORD)):
        response = _login(Client(), username, password)
        assert response.status_code == 200
        html = response.content.decode()
        assert GENERIC in html
        bodies.append(html.split('<div class="form-errors"')[1].split("</div>")[0])
    assert len(set(bodies)) == 1


def _locks_out(scenario, attempts: int = 3) -> bool:
    """Runs a lock-out scenario until it locks out, in a fresh namespace each time.

    The suite's autouse `cache.clear()` is a FLUSHDB on the Redis database that every xdist worker
    shares, so another worker's test start can wipe the counters mid-scenario. A flush can only
    make one attempt miss the lock-out; a real bug misses it every time.
    """
    return any(scenario(n) for n in range(attempts))


def test_failed_logins_are_limited_per_username(alice, settings):
    settings.PORTAL_LOGIN_MAX_FAILURES_PER_USERNAME = 3

    def scenario(n):
        name = f"erin{n}"
        MemberFactory(username=name)
        for i in range(3):
            # Different client addresses: only the username counter can trip.
            assert _login(Client(), name.upper(), "wrong", REMOTE_ADDR=f"10.{n}.0.{i}").status_code == 200
        locked = _login(Client(), name, PASSWORD, REMOTE_ADDR=f"10.{n}.0.9")
        if locked.status_code != 429:
            return False
        assert "Too many failed sign-in attempts" in locked.content.decode()
        assert "_auth_user_id" not in locked.wsgi_request.session
        return True

    assert _locks_out(scenario)
    # Another username from the same addresses is unaffected.
    assert _login(Client(), "alice", PASSWORD, REMOTE_ADDR="10.0.0.1").status_code == 302


def test_failed_logins_are_limited_per_client_ip(alice, settings):
    settings.PORTAL_LOGIN_MAX_FAILURES_PER_IP = 3

    def scenario(n):
        for i in range(3):
            _login(Client(), f"user{n}-{i}", "wrong", REMOTE_ADDR=f"192.0.2.{n}")
        return _login(Client(), "alice", PASSWORD, REMOTE_ADDR=f"192.0.2.{n}").status_code == 429

    assert _locks_out(scenario)
    assert _login(Client(), "alice", PASSWORD, REMOTE_ADDR="192.0.2.100").status_code == 302


def test_a_success_clears_the_username_counter(alice, settings):
    settings.PORTAL_LOGIN_MAX_FAILURES_PER_USERNAME = 3
    _login(Client(), "alice", "wrong")
    _login(Client(), "alice", "wrong")
    assert _login(Client(), "alice", PASSWORD).status_code == 302
    _login(Client(), "alice", "wrong")
    _login(Client(), "alice", "wrong")
    assert _login(Client(), "alice", PASSWORD).status_code == 302


def test_behind_trusted_proxies_the_limit_uses_the_forwarded_client(alice, settings):
    settings.GATEWAY_TRUSTED_PROXY_COUNT = 1
    settings.GATEWAY_TRUSTED_PROXIES = ["10.9.9.0/24"]
    settings.PORTAL_LOGIN_MAX_FAILURES_PER_IP = 2

    def scenario(n):
        client_addr = f"203.0.113.{n}"
        for spoof in ("1.1.1.1", "2.2.2.2"):
            # The client may prepend anything; the proxy appends the address it saw, last.
            xff = f"{spoof}, {client_addr}"
            _login(Client(), f"x{n}{spoof}", "wrong", REMOTE_ADDR="10.9.9.9", HTTP_X_FORWARDED_FOR=xff)
        response = _login(Client(), "alice", PASSWORD, HTTP_X_FORWARDED_FOR=client_addr, REMOTE_ADDR="10.9.9.9")
        return response.status_code == 429

    assert _locks_out(scenario)
    # Same proxy (REMOTE_ADDR), another client behind it: not locked.
    response = _login(Client(), "alice", PASSWORD, HTTP_X_FORWARDED_FOR="203.0.113.200", REMOTE_ADDR="10.9.9.9")
    assert response.status_code == 302


@pytest.mark.parametrize(
    ("trusted", "xff", "expected"),
    [
        (0, "6.6.6.6", "10.0.0.1"),
        (1, "6.6.6.6, 203.0.113.5", "203.0.113.5"),
        (2, "6.6.6.6, 203.0.113.5, 10.0.0.2", "203.0.113.5"),
        (2, "203.0.113.5", "203.0.113.5"),
        (1, "", "10.0.0.1"),
    ],
)
def test_the_client_ip_is_the_hop_the_trusted_proxies_saw(settings, trusted, xff, expected):
    settings.GATEWAY_TRUSTED_PROXY_COUNT = trusted
    settings.GATEWAY_TRUSTED_PROXIES = ["10.0.0.0/8"] if trusted else []
    request = RequestFactory().get("/", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR=xff)
    assert client_ip(request) == expected


@pytest.mark.parametrize(
    ("proxies", "peer", "expected"),
    [
        ([], "10.0.0.1", "10.0.0.1"),  # none trusted by default
        (["10.0.0.0/8"], "192.0.2.9", "192.0.2.9"),  # a client reaching the port directly
        (["10.0.0.0/8", "2001:db8::/32"], "2001:db8::5", "203.0.113.5"),
        (["10.0.0.0/8"], "::ffff:10.0.0.1", "203.0.113.5"),
        (["10.0.0.7"], "10.0.0.7", "203.0.113.5"),
    ],
)
def test_forwarded_hops_are_believed_only_from_a_trusted_peer(settings, proxies, peer, expected):
    settings.GATEWAY_TRUSTED_PROXY_COUNT = 1
    settings.GATEWAY_TRUSTED_PROXIES = proxies
    request = RequestFactory().get("/", REMOTE_ADDR=peer, HTTP_X_FORWARDED_FOR="6.6.6.6, 203.0.113.5")
    assert client_ip(request) == expected


def test_an_untrusted_client_cannot_rotate_its_address_past_the_sign_in_limit(alice, settings):
    settings.GATEWAY_TRUSTED_PROXY_COUNT = 1
    settings.PORTAL_LOGIN_MAX_FAILURES_PER_IP = 2

    def scenario(n):
        for spoof in range(3):
            xff = f"198.51.100.{n * 10 + spoof}"
            _login(Client(), f"y{n}-{spoof}", "wrong", REMOTE_ADDR=f"192.0.2.{n}", HTTP_X_FORWARDED_FOR=xff)
        response = _login(Client(), "alice", PASSWORD, REMOTE_ADDR=f"192.0.2.{n}", HTTP_X_FORWARDED_FOR="198.51.100.1")
        return response.status_code == 429

    assert _locks_out(scenario)


def test_login_needs_the_csrf_token(alice):
    client = Client(enforce_csrf_checks=True)
    assert _login(client, "alice", PASSWORD).status_code == 403


def test_logout_is_a_post_and_ends_the_session(alice):
    client = Client()
    client.force_login(alice)
    response = client.post("/accounts/logout/")
    assert response.status_code == 302
    assert client.get("/portal/").status_code == 302


def test_password_change_works_and_keeps_the_session(alice):
    client = Client()
    client.force_login(alice)
    assert client.get("/accounts/password_change/").status_code == 200
    response = client.post(
        "/accounts/password_change/",
        {"old_password": PASSWORD, "new_password1": "a-new-long-pass-9", "new_password2": "a-new-long-pass-9"},
    )
    assert response.status_code == 302
    assert client.get("/portal/").status_code == 200
    alice.refresh_from_db()
    assert alice.check_password("a-new-long-pass-9")


def test_disabling_a_member_ends_their_portal_session(alice):
    client = Client()
    client.force_login(alice)
    assert client.get("/api/me/allocations").status_code == 200
    member_set_active(member=alice, is_active=False)
    assert client.get("/portal/").status_code == 302
    assert client.get("/api/me/allocations").status_code == 401
