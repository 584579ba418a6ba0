import datetime as dt
import re
from decimal import Decimal

import pytest
from django.utils import translation

from allocations.models import Allocation, ApiKey
from allocations.services import allocation_pause
from portal.cards import cap_forecast
from portal.templatetags.portal_tags import usd
from tests.factories import AllocationFactory, CatalogModelFactory, MemberFactory, make_key
from tests.portal.conftest import settle_call

pytestmark = pytest.mark.django_db


def _card(html: str, allocation) -> str:
    match = re.search(rf'<article[^>]*data-allocation="{allocation.pk}".*?</article>', html, re.S)
    assert match, "card not found"
    return match.group(0)


def test_pages_need_a_login(client):
    for path in ("/portal/", "/portal/keys/", "/portal/usage/", "/portal/how-to-call/"):
        response = client.get(path)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/?next=")


def test_the_dashboard_card_shows_model_status_keys_spend_cap_and_price(alice_client, alice, alice_alloc):
    key, _ = make_key(member=alice, allocations=[alice_alloc])
    settle_call(alice_alloc, cost_usd="1.234567")
    card = _card(alice_client.get("/portal/").content.decode(), alice_alloc)
    assert "GPT-4o mini" in card
    assert "openai/gpt-4o-mini" in card
    assert "Active" in card
    assert f"{key.prefix}…" in card
    assert "This month&#x27;s spend" in card or "This month's spend" in card
    assert "$1.23" in card and "$10.00" in card
    assert 'value="12"' in card  # the spend bar
    assert "unlimited" in card  # no token quota
    assert "input $1.00 / 1M tokens" in card and "output $2.00 / 1M tokens" in card
    assert "near-cap-warning" not in card


@pytest.mark.parametrize(
    ("spent", "warned", "reached"), [("7.90", False, False), ("8.00", True, False), ("10.00", True, True)]
)
def test_the_near_cap_warning_shows_in_words_at_80_and_100_percent(alice_client, alice_alloc, spent, warned, reached):
    settle_call(alice_alloc, cost_usd=spent)
    card = _card(alice_client.get("/portal/").content.decode(), alice_alloc)
    assert ("near-cap-warning" in card) is warned
    assert ("Near the cap:" in card) is (warned and not reached)
    assert ("Cap reached:" in card) is reached


def test_an_unpriced_model_says_unpriced_never_zero_dollars(alice_client, alice):
    allocation = AllocationFactory(member=alice, quota_cost_usd_per_month=None)
    settle_call(allocation, input_tokens=1000)
    card = _card(alice_client.get("/portal/").content.decode(), allocation)
    spend = card[card.index("This month") : card.index("Tokens this month")]
    assert "unpriced" in spend and "$0" not in spend
    assert "no cost cap" in card
    assert '<span class="unpriced">unpriced</span>' in card[: card.index("This month")]  # the price


def test_revoked_allocations_sit_behind_a_toggle(alice_client, alice, alice_alloc):
    gone = AllocationFactory(member=alice, status=Allocation.Status.REVOKED, display_name="Old model")
    html = alice_client.get("/portal/").content.decode()
    details = html[html.index('<details class="revoked">') :]
    assert "Show 1 revoked allocation" in details
    assert f'data-allocation="{gone.pk}"' in details
    assert f'data-allocation="{gone.pk}"' not in html[: html.index('<details class="revoked">')]


def test_the_empty_state_explains_how_to_start(alice_client):
    html = alice_client.get("/portal/").content.decode()
    assert "No allocations yet" in html
    assert "/portal/keys/" in html and "/portal/how-to-call/" in html


def test_the_dashboard_in_zh_hant_reads_ben_yue_hua_fei(alice_client, alice_alloc):
    html = alice_client.get("/portal/", HTTP_ACCEPT_LANGUAGE="zh-Hant-TW,zh;q=0.9").content.decode()
    assert "本月花費" in html
    assert '<html lang="zh-hant">' in html


def test_the_language_switcher_sets_the_language(alice_client, alice_alloc):
    response = alice_client.post("/i18n/setlang/", {"language": "zh-hant", "next": "/portal/"})
    assert response.status_code == 302
    assert "本月花費" in alice_client.get("/portal/").content.decode()
    alice_client.post("/i18n/setlang/", {"language": "en", "next": "/portal/"})
    assert "This month" in alice_client.get("/portal/").content.decode()


def test_money_shows_enough_decimals_for_small_spends():
    with translation.override("en"):
        assert usd(Decimal("1234.5")) == "$1,234.50"
        assert usd(Decimal("0.0523")) == "$0.0523"
        assert usd(Decimal("0.000123")) == "$0.000123"
        assert usd(Decimal("0.000000004")) == "< $0.000001"
        assert usd(Decimal("0")) == "$0.00"
        assert usd(None) == "unpriced"
    with translation.override("zh-hant"):
        assert usd(None) != "unpriced" and usd(None)


@pytest.mark.parametrize(
    ("amount", "en", "zh"),
    [("1234.5", "$1,234.50", "US$1,234.50"), ("0.5", "$0.50", "US$0.50"), ("0.123456", "$0.123", "US$0.123"),
     ("0.000027000", "$0.000027", "US$0.000027"), ("0.00123456", "$0.00123", "US$0.00123"),
     ("0.000000004", "< $0.000001", "< US$0.000001")],
)  # fmt: skip
def test_money_has_three_significant_digits_below_a_dollar_and_the_languages_symbol(amount, en, zh):
    with translation.override("en"):
        assert usd(Decimal(amount)) == en
    with translation.override("zh-hant"):
        assert usd(Decimal(amount)) == zh


def test_a_member_pauses_and_resumes_from_the_dashboard(alice_client, alice_alloc):
    response = alice_client.post(f"/portal/allocations/{alice_alloc.pk}/pause/", follow=True)
    alice_alloc.refresh_from_db()
    assert alice_alloc.status == "paused" and alice_alloc.paused_by == "member"
    assert "You paused this allocation." in response.content.decode()
    alice_client.post(f"/portal/allocations/{alice_alloc.pk}/resume/")
    alice_alloc.refresh_from_db()
    assert alice_alloc.status == "active"


def test_an_admin_pause_shows_why_and_offers_no_resume(alice_client, alice_alloc, staff):
    allocation_pause(allocation=alice_alloc, by="admin", actor=staff, reason="Budget review")
    card = _card(alice_client.get("/portal/").content.decode(), alice_alloc)
    assert "Paused by an admin." in card and "Budget review" in card
    assert "/resume/" not in card
    response = alice_client.post(f"/portal/allocations/{alice_alloc.pk}/resume/", follow=True)
    assert "only an admin can resume it" in response.content.decode()
    alice_alloc.refresh_from_db()
    assert alice_alloc.status == "paused"


def test_the_keys_page_creates_a_key_and_shows_the_plaintext_once(alice_client, alice_alloc):
    posted = alice_client.post("/portal/keys/", {"name": "laptop", "allocations": [str(alice_alloc.pk)]})
    assert posted.status_code == 303 and posted["Location"] == "/portal/keys/"
    assert "sk-gw-" not in posted.content.decode()
    response = alice_client.get("/portal/keys/")
    html = response.content.decode()
    key = ApiKey.objects.get(name="laptop")
    plaintext = re.search(r'id="key-plaintext-value"[^>]*value="(sk-gw-[^"]+)"', html).group(1)
    assert ApiKey.hash(plaintext) == key.key_hash
    assert "shown only once" in html
    assert "no-store" in response["Cache-Control"]
    again = alice_client.get("/portal/keys/").content.decode()
    assert plaintext not in again and key.prefix in again


def test_the_keys_page_renames_rotates_and_revokes(alice_client, alice, alice_alloc):
    key, old = make_key(member=alice, allocations=[alice_alloc], name="old")
    alice_client.post(f"/portal/keys/{key.pk}/rename/", {"name": "renamed"})
    key.refresh_from_db()
    assert key.name == "renamed"
    html = alice_client.post(f"/portal/keys/{key.pk}/rotate/", follow=True).content.decode()
    new = re.search(r'value="(sk-gw-[^"]+)"', html).group(1)
    key.refresh_from_db()
    assert new != old and key.key_hash == ApiKey.hash(new)
    alice_client.post(f"/portal/keys/{key.pk}/revoke/")
    key.refresh_from_db()
    assert key.revoked_at is not None


def test_reloading_after_create_or_rotate_repeats_neither(alice_client, alice, alice_alloc):
    """Post/redirect/get: the reload after a create or a rotation is a GET of the keys page."""
    created = alice_client.post("/portal/keys/", {"name": "once", "allocations": [str(alice_alloc.pk)]}, follow=True)
    assert [status for _, status in created.redirect_chain] == [303]
    plaintext = re.search(r'value="(sk-gw-[^"]+)"', created.content.decode()).group(1)
    reloaded = alice_client.get("/portal/keys/").content.decode()
    assert ApiKey.objects.filter(member=alice, name="once").count() == 1
    assert plaintext not in reloaded
    key = ApiKey.objects.get(name="once")
    rotated = alice_client.post(f"/portal/keys/{key.pk}/rotate/", follow=True)
    assert [status for _, status in rotated.redirect_chain] == [303]
    copied = re.search(r'value="(sk-gw-[^"]+)"', rotated.content.decode()).group(1)
    alice_client.get("/portal/keys/")  # the reload
    key.refresh_from_db()
    assert key.key_hash == ApiKey.hash(copied) and key.revoked_at is None  # the key just copied still works
    assert ApiKey.objects.filter(member=alice).live().count() == 1


def test_the_create_form_refuses_missing_name_and_another_members_allocation(alice_client, alice_alloc, bob_alloc):
    response = alice_client.post("/portal/keys/", {"name": "", "allocations": [str(alice_alloc.pk)]})
    assert response.status_code == 400
    response = alice_client.post("/portal/keys/", {"name": "x", "allocations": [str(bob_alloc.pk)]})
    assert response.status_code == 400
    assert not ApiKey.objects.filter(name="x").exists()


def test_portal_actions_on_another_members_objects_are_404(alice_client, bob_alloc):
    key, _ = make_key(member=bob_alloc.member, allocations=[bob_alloc], name="bob key")
    for path in (
        f"/portal/keys/{key.pk}/rename/",
        f"/portal/keys/{key.pk}/rotate/",
        f"/portal/keys/{key.pk}/revoke/",
        f"/portal/allocations/{bob_alloc.pk}/pause/",
        f"/portal/allocations/{bob_alloc.pk}/resume/",
    ):
        assert alice_client.post(path, {"name": "mine"}).status_code == 404, path
    assert alice_client.get(f"/portal/usage/?allocation={bob_alloc.pk}").status_code == 404
    key.refresh_from_db()
    bob_alloc.refresh_from_db()
    assert key.name == "bob key" and key.revoked_at is None and bob_alloc.status == "active"


def test_portal_forms_need_the_csrf_token(alice_csrf_client, alice_alloc):
    response = alice_csrf_client.post(f"/portal/allocations/{alice_alloc.pk}/pause/")
    assert response.status_code == 403
    alice_alloc.refresh_from_db()
    assert alice_alloc.status == "active"


def test_the_usage_page_shows_chart_data_spend_by_model_and_calls(alice_client, alice, alice_alloc):
    unpriced = AllocationFactory(member=alice, model=CatalogModelFactory(slug="sim/free"))
    settle_call(alice_alloc, cost_usd="0.25", when=dt.datetime(2026, 3, 3, 9, tzinfo=dt.UTC))
    settle_call(unpriced, input_tokens=42, when=dt.datetime(2026, 3, 4, 9, tzinfo=dt.UTC))
    html = alice_client.get("/portal/usage/?period=2026-03").content.decode()
    assert 'id="daily-spend-chart"' in html
    assert '"day": "2026-03-03", "cost_usd": "0.250000000", "cumulative_usd": "0.250000000"' in html
    assert '"day": "2026-03-31", "cost_usd": "0.000000000", "cumulative_usd": "0.250000000"' in html
    assert html.count('"day": "2026-03-') == 31
    assert "vendor/chartjs/chart.umd.min.js" in html
    assert "sim/free" in html and "openai/gpt-4o-mini" in html
    calls = html[html.index('class="calls-table') :]
    assert "$0.25" in calls and "unpriced" in calls and "42 in / 0 out" in calls
    # a model whose calls are all unpriced shows "unpriced" as its spend, never $0
    by_model = html[html.index("<code>sim/free</code>") : html.index("</tr>", html.index("<code>sim/free</code>"))]
    assert '<span class="unpriced">unpriced</span>' in by_model and "$0" not in by_model


def test_the_usage_page_paginates_calls_by_cursor(alice_client, alice_alloc):
    start = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    for i in range(52):
        settle_call(alice_alloc, cost_usd="0.01", when=start + dt.timedelta(minutes=i))
    html = alice_client.get("/portal/usage/?period=2026-03").content.decode()
    link = re.search(r'href="([^"]*cursor=[^"]+)" rel="next"', html).group(1).replace("&amp;", "&")
    second = alice_client.get("/portal/usage/" + link).content.decode()
    assert second.count('<td data-label="Time"') == 2
    assert 'rel="next"' not in second
    # A tampered cursor falls back to the first page instead of failing.
    assert alice_client.get("/portal/usage/?period=2026-03&cursor=garbage").status_code == 302


def test_how_to_call_uses_the_base_url_and_the_members_models(alice_client, alice_alloc):
    html = alice_client.get("/portal/how-to-call/").content.decode()
    assert "http://testserver/v1" in html
    assert "ws://testserver/v1/realtime" in html
    assert 'model="openai/gpt-4o-mini"' in html
    assert "from openai import OpenAI" in html and 'import OpenAI from "openai"' in html


def test_other_members_allocations_never_appear(alice_client, bob_alloc):
    bob_alloc.display_name = "BOB ONLY"
    bob_alloc.save()
    for path in ("/portal/", "/portal/keys/", "/portal/usage/", "/portal/how-to-call/"):
        assert "BOB ONLY" not in alice_client.get(path).content.decode()
        assert str(bob_alloc.pk) not in alice_client.get(path).content.decode()


def test_a_staff_member_sees_only_own_allocations_too(db, alice_alloc):
    from django.test import Client

    admin = MemberFactory(username="root", is_staff=True)
    client = Client()
    client.force_login(admin)
    assert str(alice_alloc.pk) not in client.get("/portal/").content.decode()


def test_numbers_are_grouped_in_both_languages(alice_client, alice):
    allocation = AllocationFactory(member=alice, quota_tokens_per_month=5_000_000)
    settle_call(allocation, input_tokens=1_200_000)
    for language in ("en", "zh-Hant"):
        card = _card(alice_client.get("/portal/", HTTP_ACCEPT_LANGUAGE=language).content.decode(), allocation)
        assert "1,200,000" in card and "5,000,000" in card, language


def test_how_to_call_has_a_snippet_for_every_kind_the_member_holds(alice_client, alice, alice_alloc):
    for slug, kind in [
        ("openai/text-embedding-3-small", "embedding"),
        ("openai/gpt-image-1", "image"),
        ("openai/tts-1", "tts"),
        ("openai/whisper-1", "stt"),
    ]:
        AllocationFactory(member=alice, model=CatalogModelFactory(slug=slug, kind=kind))
    html = alice_client.get("/portal/how-to-call/").content.decode()
    assert 'model="openai/text-embedding-3-small"' in html and "client.embeddings.create" in html
    assert 'model="openai/gpt-image-1"' in html and "client.images.generate" in html
    assert 'model="openai/tts-1"' in html and "client.audio.speech" in html
    assert 'model="openai/whisper-1"' in html and "client.audio.transcriptions.create" in html
    assert "/rerank" not in html and "/ocr" not in html  # kinds the member does not hold


def test_the_card_of_an_overrun_cap_says_cap_reached_over_by_and_the_true_percentage(alice_client, alice_alloc):
    settle_call(alice_alloc, cost_usd="11.5")  # $11.50 of $10
    card = _card(alice_client.get("/portal/").content.decode(), alice_alloc)
    assert "badge-cap-reached" in card and "badge-active" not in card
    assert "(115 %)" in card and 'value="100"' in card
    assert "$1.50 over the cap" in card
    assert "resets on" in card


@pytest.mark.parametrize(
    ("ratio", "reaches"),
    [("0.5", dt.date(2026, 11, 21)), ("0.2", None), ("1", None)],
)
def test_the_forecast_reaches_the_cap_at_this_months_daily_rate(ratio, reaches):
    start, end = dt.datetime(2026, 11, 1, tzinfo=dt.UTC), dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    now = dt.datetime(2026, 11, 11, tzinfo=dt.UTC)  # 10 days in: half used means full on day 21
    forecast = cap_forecast(ratio=Decimal(ratio), cost_used=Decimal("5"), start=start, end=end, now=now)
    assert forecast.reaches_on == reaches
    assert forecast.daily_cost == Decimal("0.5")


def test_favicon_ico_leads_to_the_icon(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 301 and response["Location"].endswith("favicon.svg")


def test_a_reached_cap_draws_its_bar_in_red_not_the_near_cap_amber(alice_client, alice, alice_alloc):
    over = AllocationFactory(member=alice, model=alice_alloc.model, quota_cost_usd_per_month=Decimal("2"))
    settle_call(alice_alloc, cost_usd="8.5")
    settle_call(over, cost_usd="2.3")
    html = alice_client.get("/portal/").content.decode()
    assert 'class="meter meter-near"' in _card(html, alice_alloc)
    assert 'class="meter meter-over"' in _card(html, over) and "meter-near" not in _card(html, over)
