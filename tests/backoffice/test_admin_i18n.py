"""The admin in zh-Hant: the overview, member page, filters, columns and cap marks are Chinese, and
money carries the language's US$."""

from decimal import Decimal

import pytest

from tests.factories import AllocationFactory, CatalogModelFactory, MemberFactory
from tests.portal.conftest import dollar_price, settle_call


@pytest.fixture
def zh_client(admin_client):
    admin_client.cookies["django_language"] = "zh-hant"
    return admin_client


@pytest.fixture
def over(db):
    model = CatalogModelFactory(slug="openai/gpt-4o-mini")
    dollar_price(model)
    allocation = AllocationFactory(
        member=MemberFactory(username="ken"), model=model, quota_cost_usd_per_month=Decimal("2")
    )
    settle_call(allocation, cost_usd="2.4")
    return allocation


def test_the_overview_and_member_page_read_in_zh_hant(zh_client, over):
    overview = zh_client.get("/admin/overview/").content.decode()
    for words in ("花費總覽", "本月花費", "接近或超出上限", "超出上限", "提高上限", "US$2.40"):
        assert words in overview, words
    assert "Spend overview" not in overview and "Raise cap" not in overview
    member = zh_client.get(f"/admin/members/{over.member_id}/").content.decode()
    for words in ("有效金鑰", "最近的呼叫", "已封鎖：超出上限", "重設密碼"):
        assert words in member, words


def test_lists_filters_and_columns_read_in_zh_hant(zh_client, over):
    calls = zh_client.get("/admin/quota/callrecord/").content.decode()
    for words in ("依成員（使用者名稱）", "開始於此日或之後", "套用", "延遲 / 首個 token（毫秒）", "請求 ID"):
        assert words in calls, words
    allocations = zh_client.get("/admin/allocations/allocation/").content.decode()
    for words in ("本月用量", "本月花費 / 上限", "已封鎖：超出上限", "超出上限"):
        assert words in allocations, words
    bad = zh_client.get("/admin/quota/callrecord/", {"started_from": "March"})
    assert "不是日期" in [str(m) for m in bad.context["messages"]][0]
