from notifications.models import AlertPreference


def test_a_member_switches_an_alert_kind_off_in_the_portal(client, member):
    client.force_login(member)
    page = client.get("/portal/alerts/")
    assert page.status_code == 200 and b'name="near_cap"' in page.content

    response = client.post("/portal/alerts/", {"cap_reached": "on"}, HTTP_ACCEPT_LANGUAGE="zh-hant")

    assert response.status_code == 302
    preference = AlertPreference.objects.get(member=member)
    assert (preference.near_cap, preference.cap_reached) == (False, True)
    assert preference.language == "zh-hant"


def test_the_alerts_page_needs_a_sign_in(client, db):
    assert client.get("/portal/alerts/").status_code == 302


def test_signing_in_remembers_the_language_for_mails(client, member):
    client.post("/accounts/login/", {"username": "alice", "password": "pw-for-tests-1"}, HTTP_ACCEPT_LANGUAGE="zh-hant")
    assert AlertPreference.objects.get(member=member).language == "zh-hant"
