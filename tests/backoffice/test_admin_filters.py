"""Call-record filters combine: each typed box carries every other parameter of the list, one hidden
input per value; a bad date or id says so instead of showing nothing."""

import datetime as dt
from html.parser import HTMLParser

import pytest

from quota.models import CallRecord
from tests.factories import AllocationFactory, CatalogModelFactory, MemberFactory
from tests.portal.conftest import dollar_price, reject_call, settle_call

CALLS = "/admin/quota/callrecord/"
MARCH_3, MARCH_9 = dt.datetime(2026, 3, 3, 9, tzinfo=dt.UTC), dt.datetime(2026, 3, 9, 9, tzinfo=dt.UTC)


class FilterForms(HTMLParser):
    """The hidden inputs and the typed box of every `form.input-filter` on a page."""

    def __init__(self):
        super().__init__()
        self.forms: dict[str, list[tuple[str, str]]] = {}
        self.buttons: set[str] = set()
        self._hidden: list[tuple[str, str]] | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "form" and "input-filter" in (attributes.get("class") or ""):
            self._hidden = []
        elif tag == "input" and self._hidden is not None:
            if attributes.get("type") == "hidden":
                self._hidden.append((attributes["name"], attributes["value"]))
            else:
                self._box = attributes["name"]
        elif tag == "button" and self._hidden is not None:
            self.buttons.add(self._box)

    def handle_endtag(self, tag):
        if tag == "form" and self._hidden is not None:
            self.forms[self._box], self._hidden = self._hidden, None


def _forms(response) -> FilterForms:
    parser = FilterForms()
    parser.feed(response.content.decode())
    return parser


def _submit(client, page, box: str, typed: str):
    """What the browser sends when the admin types into `box` on `page` and presses Enter."""
    return client.get(CALLS, [*_forms(page).forms[box], (box, typed)])


def _ids(response) -> set:
    return {r.pk for r in response.context["cl"].result_list}


@pytest.fixture
def records(db):
    mini, other = CatalogModelFactory(slug="openai/gpt-4o-mini"), CatalogModelFactory(slug="mistral/small")
    dollar_price(mini), dollar_price(other)
    mei = AllocationFactory(member=MemberFactory(username="mei"), model=mini)
    ken = AllocationFactory(member=MemberFactory(username="ken"), model=other)
    refused_mei = reject_call(mei, when=MARCH_3, outcome="rejected_cost_quota_exceeded")
    refused_ken = reject_call(ken, when=MARCH_9, outcome="rejected_cost_quota_exceeded")
    ok_mei = CallRecord.objects.get(request_id=settle_call(mei, cost_usd="0.5", when=MARCH_9).request_id)
    return {"refused_mei": refused_mei.pk, "refused_ken": refused_ken.pk, "ok_mei": ok_mei.pk}


def test_typing_a_member_keeps_the_outcome_choice(admin_client, records):
    page = admin_client.get(CALLS, {"outcome__exact": "rejected_cost_quota_exceeded"})
    assert ("outcome__exact", "rejected_cost_quota_exceeded") in _forms(page).forms["member_name"]
    assert _ids(_submit(admin_client, page, "member_name", "mei")) == {records["refused_mei"]}


def test_text_and_date_filters_combine_with_search_and_each_other(admin_client, records):
    page = admin_client.get(CALLS, {"member_name": "mei", "o": "1"})
    page = _submit(admin_client, page, "started_from", "2026-03-05")
    assert _ids(page) == {records["ok_mei"]}
    page = _submit(admin_client, page, "started_before", "2026-03-10")
    assert {"member_name", "started_from", "o"} <= {name for name, _ in _forms(page).forms["started_before"]}
    assert _ids(page) == {records["ok_mei"]}
    refused = CallRecord.objects.get(pk=records["refused_mei"])
    searched = admin_client.get(CALLS, {"q": refused.request_id})
    assert _ids(_submit(admin_client, searched, "started_before", "2026-03-05")) == {refused.pk}
    assert _ids(_submit(admin_client, searched, "started_from", "2026-03-05")) == set()


def test_every_typed_box_has_an_apply_button_and_dates_are_date_inputs(admin_client, records):
    page = admin_client.get(CALLS)
    forms = _forms(page)
    assert set(forms.forms) == {"member_name", "allocation_id", "model_slug", "started_from", "started_before"}
    assert forms.buttons == set(forms.forms)
    html = page.content.decode()
    assert 'name="started_from" type="date"' in html and 'name="member_name" type="text"' in html


@pytest.mark.parametrize(("box", "typed"), [("started_from", "March"), ("started_before", "05/03/2026"),
                                            ("allocation_id", "not-a-uuid")])  # fmt: skip
def test_a_bad_date_or_id_is_reported_and_that_filter_is_left_out(admin_client, records, box, typed):
    page = admin_client.get(CALLS, {box: typed, "member_name": "ken"})
    notices = [str(m) for m in page.context["messages"]]
    assert len(notices) == 1 and f"“{typed}”" in notices[0] and "not applied" in notices[0]
    if box != "allocation_id":
        assert "YYYY-MM-DD" in notices[0]
    assert _ids(page) == {records["refused_ken"]}  # the member filter still applies, not 0 records
    assert 'aria-invalid="true"' in page.content.decode()
