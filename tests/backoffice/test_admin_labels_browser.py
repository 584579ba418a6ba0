"""Admin in zh-Hant names things in Chinese: on the call-record and allocation lists and change
pages (a real Chromium), no column header, filter title, field label, fieldset or page title is
left in English. Proper names and units stay as they are (API, ID, URL, tokens, US$ ...)."""

import re

import pytest
from django.urls import reverse

from quota.models import CallRecord
from tests.browser import needs_chromium, orm

from .test_admin_browser import log_in, staff_world  # noqa: F401 (a fixture)

pytestmark = [needs_chromium, pytest.mark.xdist_group("portal-browser")]

# Words that are the same in both languages: abbreviations, units and names.
KEPT = {"id", "api", "url", "ip", "sso", "usd", "us", "rpm", "tpm", "token", "tokens", "sub", "ms", "csv"}
WORD = re.compile(r"[A-Za-z]{2,}")

# What names a thing on these pages: list columns and filters, field labels and fieldsets, the page
# title (not the object's own name, which the change page shows beneath it, nor the breadcrumbs).
LABELS = """() => {
  const picked = [
    "#result_list thead th", "#changelist-filter h2", "#changelist-filter h3", "#changelist-filter summary",
    "#changelist-filter label", "label", "fieldset h2", "fieldset legend", "#content h1",
    "#changelist-search label",
  ];
  const seen = [];
  for (const el of document.querySelectorAll(picked.join(","))) {
    const text = (el.innerText || "").trim();
    if (text && el.getClientRects().length) { seen.push(text); }
  }
  return seen;
}"""


def english_words(text: str) -> list[str]:
    return [w for w in WORD.findall(text) if w.lower() not in KEPT]  # headers may be upper-cased by CSS


def _pages(world) -> list[str]:
    record = orm(lambda: CallRecord.objects.filter(allocation=world["near"]).first())
    return [
        reverse("admin:quota_callrecord_changelist"),
        reverse("admin:quota_callrecord_change", args=[record.pk]),
        reverse("admin:allocations_allocation_changelist"),
        reverse("admin:allocations_allocation_change", args=[world["over"].pk]),
    ]


def test_call_record_and_allocation_pages_have_no_english_labels_in_zh_hant(staff_world, page):  # noqa: F811
    log_in(page, width=1280, language="zh-hant")
    found = {}
    for path in _pages(staff_world):
        page.goto(page.base_url + path)
        labels = page.evaluate(LABELS)
        assert labels, f"{path}: no labels found (the selectors no longer match the page)"
        english = {text: english_words(text) for text in labels if english_words(text)}
        if english:
            found[path] = english
    assert not found, "\n".join(f"{path}: {english}" for path, english in found.items())


def test_the_same_pages_in_english_are_caught_by_the_check(staff_world, page):  # noqa: F811
    """The check itself: in English these labels are words it finds."""
    log_in(page, width=1280, language="en")
    page.goto(page.base_url + reverse("admin:allocations_allocation_change", args=[staff_world["over"].pk]))
    assert sum(bool(english_words(text)) for text in page.evaluate(LABELS)) >= 5
