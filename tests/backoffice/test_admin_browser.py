"""Every admin page in a real Chromium at 1280 px with the sidebar open and at 390 px, in English and
zh-Hant: nothing runs past the viewport, nothing logs an error, and axe-core finds no serious or
critical violation (axe-core from npm: `make tests/a11y/node_modules`)."""

import datetime as dt
import re
from decimal import Decimal
from pathlib import Path

import pytest
from django.utils import timezone

from quota.periods import period_bounds
from tests.browser import needs_chromium, orm, screenshot
from tests.factories import AllocationFactory, CatalogModelFactory, MemberFactory, make_key
from tests.portal.conftest import PASSWORD, dollar_price, reject_call, settle_call

AXE = Path(__file__).resolve().parents[1] / "a11y" / "node_modules" / "axe-core" / "axe.min.js"
needs_axe = pytest.mark.skipif(not AXE.exists(), reason="axe-core is not installed: make tests/a11y/node_modules")
pytestmark = [needs_chromium, needs_axe, pytest.mark.xdist_group("portal-browser")]

# Past the real viewport: the page's own scroll width, and any visible element's right edge. A box
# that scrolls sideways inside the page hides columns just the same, so it counts too.
SIDEWAYS = """(width) => {
  const found = [];
  const hidden = (el) => {
    for (let at = el; at; at = at.parentElement) {
      const style = getComputedStyle(at);
      if (style.clip.startsWith("rect") || style.display === "none" || style.visibility === "hidden") { return true; }
      if (at.id === "nav-sidebar" && at.getBoundingClientRect().right <= 0) { return true; }
    }
    return false;
  };
  if (document.documentElement.scrollWidth > width) { found.push("page " + document.documentElement.scrollWidth); }
  for (const el of document.querySelectorAll("body *")) {
    if (el.tagName === "OPTION" || el.tagName === "svg" || el.closest("svg") || hidden(el)) { continue; }
    const style = getComputedStyle(el), box = el.getBoundingClientRect();
    const name = el.tagName + "#" + el.id + "." + el.className + " " + (el.textContent || "").trim().slice(0, 30);
    if (["auto", "scroll"].includes(style.overflowX) && el.scrollWidth > el.clientWidth + 1) {
      found.push("scrolls " + el.scrollWidth + "/" + el.clientWidth + ": " + name);
    }
    if (box.width > 0 && box.right > width + 1) { found.push("past the edge " + Math.round(box.right) + ": " + name); }
  }
  return found.slice(0, 8);
}"""

SCREENSHOTS = {"/admin/overview/": "overview", "/admin/quota/callrecord/": "call-records"}

AXE_RUN = """async () => {
  const result = await window.axe.run(document, { resultTypes: ["violations"] });
  return result.violations.filter(v => ["serious", "critical"].includes(v.impact))
    .map(v => v.id + ": " + v.nodes.slice(0, 3).map(n => n.target.join(" ")).join(", "));
}"""


@pytest.fixture
def staff_world(transactional_db):
    """Staff, members near and over their caps, a tiny cap, refusals and a page of calls."""
    boss = MemberFactory(username="boss", is_staff=True, is_superuser=True)
    start, _ = period_bounds(timezone.now())
    when = start + (timezone.now() - start) / 2
    mini = CatalogModelFactory(slug="openai/gpt-4o-mini")
    big = CatalogModelFactory(slug="anthropic/claude-sonnet-4-with-a-long-model-name")
    dollar_price(mini), dollar_price(big)
    mei, ken = MemberFactory(username="mei", email="mei@example.com"), MemberFactory(username="ken.long-username")
    near = AllocationFactory(member=mei, model=mini, display_name="Mei's chat", quota_cost_usd_per_month=Decimal(10))
    over = AllocationFactory(member=ken, model=big, display_name="Ken's big model", quota_cost_usd_per_month=Decimal(2))
    tiny = AllocationFactory(
        member=ken, model=mini, quota_cost_usd_per_month=Decimal("0.002"), quota_tokens_per_month=5000
    )
    make_key(member=mei, allocations=[near], name="laptop")
    make_key(member=ken, allocations=[over, tiny], name="a key with a long name for the phone layout")
    for i in range(12):
        settle_call(near, cost_usd="0.7", when=when - dt.timedelta(hours=i))
        settle_call(tiny, cost_usd="0.000027", when=when - dt.timedelta(hours=i, minutes=5))
    settle_call(over, cost_usd="2.3", when=when)
    reject_call(over, outcome="rejected_cost_quota_exceeded")
    group = _budget_group([mei, ken])
    return {"boss": boss, "mei": mei, "near": near, "over": over, "group": group}


def _budget_group(members):
    """A group with a budget near its cap (the group page shows budget and spend)."""
    from allocations.models import Group
    from quota.models import GroupUsageCounter
    from quota.periods import period_start_date

    group = Group.objects.create(name="Research and development", slug="rnd", quota_cost_usd_per_month=Decimal(20))
    group.members.add(*members)
    GroupUsageCounter.objects.create(
        group=group, period_start=period_start_date(timezone.now()), cost_used=Decimal("17.5"), tokens_used=123456
    )
    return group


def _pages(world) -> list[str]:
    from django.contrib import admin
    from django.urls import reverse

    from quota.models import CallRecord

    pages = ["/admin/", "/admin/overview/", f"/admin/members/{world['mei'].pk}/", "/admin/members/new/"]
    for model in admin.site._registry:
        pages.append(reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist"))
    pages.append(reverse("admin:allocations_allocation_change", args=[world["over"].pk]))
    pages.append(reverse("admin:allocations_member_change", args=[world["mei"].pk]))
    pages.append(reverse("admin:allocations_group_change", args=[world["group"].pk]))
    record = orm(lambda: CallRecord.objects.filter(allocation=world["near"]).first())
    pages.append(reverse("admin:quota_callrecord_change", args=[record.pk]))
    return pages


def log_in(page, *, width: int, language: str) -> None:
    page.set_viewport_size({"width": width, "height": 844 if width < 500 else 900})
    page.context.add_cookies([{"name": "django_language", "value": language, "url": page.base_url}])
    page.goto(page.base_url + "/admin/login/?next=/admin/")
    page.locator("#id_username").fill("boss")
    page.locator("#id_password").fill(PASSWORD)
    page.locator("input[type=submit]").click()
    page.wait_for_url(re.compile(r".*/admin/$"))
    page.evaluate("localStorage.setItem('django.admin.navSidebarIsOpen', 'true')")


def check(page, path: str, width: int) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    response = page.goto(page.base_url + path)
    found = [f"status {response.status}"] if response.status != 200 else []
    if width >= 1280 and page.locator("#nav-sidebar").count():
        assert page.locator("#nav-sidebar").is_visible(), f"{path}: the sidebar is closed"
    found += page.evaluate(SIDEWAYS, width)
    # The page's own errors, read before axe runs: axe's probes set inline styles, which the
    # Content-Security-Policy refuses and reports on the console as the page's.
    found += [f"console {e}" for e in errors]
    page.evaluate(AXE.read_text())
    found += [f"axe {v}" for v in page.evaluate(AXE_RUN)]
    return found


@pytest.mark.parametrize("language", ["en", "zh-hant"])
@pytest.mark.parametrize("width", [1280, 390])
def test_every_admin_page_fits_logs_no_error_and_passes_axe(staff_world, page, width, language):
    log_in(page, width=width, language=language)
    failures = {}
    for path in _pages(staff_world):
        found = check(page, path, width)
        if found:
            failures[path] = found
        if language == "en" and path in SCREENSHOTS:
            screenshot(page, f"admin-{SCREENSHOTS[path]}-{width}.png")
    listing = "\n".join(f"{path}\n  " + "\n  ".join(found) for path, found in failures.items())
    assert not failures, f"at {width} px in {language}:\n{listing}"
