"""seed_demo, create_admin_token, load_prices and reconcile_usage: idempotent, audited, all-or-nothing."""

import io
import re
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from allocations.access import key_scope
from allocations.exceptions import Unauthorized
from allocations.models import AdminToken, Allocation, ApiKey, AuditEvent, CatalogModel, Member, Provider
from quota.models import CallRecord, PriceVersion, UsageCounter
from quota.periods import period_start_date
from quota.pricing import Usage, cost_for
from tests.factories import roll_up_records

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hasher")]

KINDS = {"chat", "embedding", "image", "tts", "stt", "ocr", "rerank", "moderation", "realtime"}


def run(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def printed_key(output: str) -> str:
    keys = re.findall(r"sk-gw-[A-Za-z0-9_-]{43}", output)
    assert len(keys) == 1, output
    return keys[0]


def printed_password(output: str, username: str) -> str:
    return re.search(rf"login {username} / (\S+)", output).group(1)


def counts() -> dict:
    return {
        "members": Member.objects.count(),
        "providers": Provider.objects.count(),
        "models": CatalogModel.objects.count(),
        "prices": PriceVersion.objects.count(),
        "allocations": Allocation.objects.count(),
        "live keys": ApiKey.objects.live().count(),
    }


# --- seed_demo --------------------------------------------------------------------------------------------


def test_seed_demo_builds_the_demo_and_prints_logins_and_a_working_key():
    output = run("seed_demo")
    assert "http://127.0.0.1:8000/portal/" in output and "http://127.0.0.1:8000/admin/" in output
    admin = Member.objects.get(username="admin")
    assert admin.is_staff and admin.is_superuser and admin.check_password(printed_password(output, "admin"))
    assert Member.objects.get(username="demo").check_password(printed_password(output, "demo"))
    provider = Provider.objects.get(name="simulated")
    assert provider.kind == "simulated"
    assert set(CatalogModel.objects.filter(provider=provider).values_list("kind", flat=True)) == KINDS
    chat = CatalogModel.objects.get(slug="sim/gpt-4o-mini")
    assert chat.upstream_name == "gpt-4o-mini" and chat.kind == "chat"
    scope = key_scope(printed_key(output))
    assert {a.model_kind for a in scope.allocations} == KINDS
    caps = [a.cost_cap for a in scope.allocations]
    assert None in caps and any(c is not None for c in caps)  # allocations with and without caps


def test_every_demo_model_is_priced_with_a_unit_that_fits_its_meter():
    run("seed_demo")
    units = {
        "image": "image",
        "tts": "character",
        "stt": "minute",
        "ocr": "page",
        "rerank": "query",
        "moderation": "request",
    }
    now = timezone.now()
    for model in CatalogModel.objects.all():
        price = PriceVersion.objects.in_force(model=model, at=now)
        assert price is not None, model.slug
        if model.kind in units:
            assert price.unit == units[model.kind], model.slug
            meter = "second" if model.kind == "stt" else units[model.kind]
            assert cost_for(price, Usage(quantity=Decimal(60), unit=meter)) > 0
        else:
            assert not price.unit and price.input_per_1m is not None
            assert cost_for(price, Usage(input_tokens=1000, output_tokens=10)) > 0


def test_seed_demo_twice_leaves_one_set_and_prints_a_working_key_both_times():
    first = run("seed_demo")
    before = counts()
    first_key = printed_key(first)
    second = run("seed_demo")
    assert counts() == before
    assert "rotated" in second
    second_key = printed_key(second)
    assert key_scope(second_key)
    with pytest.raises(Unauthorized):
        key_scope(first_key)
    admin = Member.objects.get(username="admin")
    assert admin.check_password(printed_password(second, "admin"))
    client = Client()
    assert client.login(username="admin", password=printed_password(second, "admin"))
    assert client.get("/admin/allocations/allocation/").status_code == 200


def test_seed_demo_audits_its_writes_through_the_services():
    run("seed_demo")
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {
        "member_created",
        "provider_created",
        "model_created",
        "price_version_added",
        "allocation_created",
    } <= actions
    assert AuditEvent.objects.filter(action="allocation_created").count() == len(KINDS)
    run("seed_demo")
    assert AuditEvent.objects.filter(action="allocation_created").count() == len(KINDS)
    assert AuditEvent.objects.filter(action="key_rotated").count() == 1


def test_seed_demo_promotes_an_existing_admin_made_by_create_admin_token():
    run("create_admin_token")
    assert not Member.objects.get(username="admin").is_superuser
    run("seed_demo")
    assert Member.objects.get(username="admin").is_superuser
    assert AuditEvent.objects.filter(action="member_roles_updated").count() == 1


# --- create_admin_token -------------------------------------------------------------------------------------


def test_create_admin_token_makes_the_staff_user_and_prints_the_token_last(client):
    output = run("create_admin_token", "--user", "Ops")
    token = output.strip().splitlines()[-1]
    assert token.startswith("gwadm-") and " " not in token
    ops = Member.objects.get(username="ops")
    assert ops.is_staff and not ops.has_usable_password()
    assert AdminToken.objects.get(user=ops).token_hash == ApiKey.hash(token)
    assert client.get("/api/admin/audit", HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 200
    again = run("create_admin_token", "--user", "ops").strip().splitlines()[-1]
    assert again != token and Member.objects.filter(username="ops").count() == 1
    assert set(AuditEvent.objects.values_list("action", flat=True)) == {"member_created", "admin_token_created"}


def test_create_admin_token_refuses_a_non_staff_user(member):
    with pytest.raises(CommandError, match="not staff"):
        run("create_admin_token", "--user", "alice")
    assert not AdminToken.objects.exists()


# --- load_prices -----------------------------------------------------------------------------------------------


@pytest.fixture
def models(db):
    run("seed_demo")


def test_load_prices_reads_yaml_with_exact_decimals(tmp_path, models):
    path = tmp_path / "prices.yaml"
    path.write_text(
        "- model: sim/gpt-4o-mini\n  effective_from: 2030-01-01T00:00:00Z\n  input_per_1m: 0.1\n  output_per_1m: 0.3\n"
        "- {model: sim/gpt-image-1, unit: image, price_per_unit: 0.035}\n"
    )
    before = PriceVersion.objects.count()
    assert "Loaded 2" in run("load_prices", str(path))
    assert PriceVersion.objects.count() == before + 2
    version = PriceVersion.objects.filter(model__slug="sim/gpt-4o-mini").latest("effective_from")
    assert version.input_per_1m == Decimal("0.1") and version.effective_from.year == 2030
    assert AuditEvent.objects.filter(action="price_version_added").count() == before + 2


def test_load_prices_reads_json(tmp_path, models):
    path = tmp_path / "prices.json"
    path.write_text('[{"model": "sim/ocr-1", "unit": "page", "price_per_unit": 0.002}]')
    run("load_prices", str(path))
    assert PriceVersion.objects.filter(model__slug="sim/ocr-1", price_per_unit=Decimal("0.002")).exists()


def test_a_bad_row_fails_the_whole_file_with_one_error_per_row(tmp_path, models):
    path = tmp_path / "prices.yaml"
    path.write_text(
        "- {model: sim/gpt-4o-mini, input_per_1m: 1}\n"
        "- {model: sim/nope, input_per_1m: 1}\n"
        "- {model: sim/gpt-4o-mini, input_per_1m: -1}\n"
        "- {model: sim/gpt-image-1, unit: image}\n"
        "- {model: sim/gpt-4o-mini, input_per_1m: 1, colour: red}\n"
        "- just a string\n"
    )
    before = PriceVersion.objects.count()
    with pytest.raises(CommandError) as error:
        run("load_prices", str(path))
    message = str(error.value)
    assert "nothing loaded" in message
    for index in (1, 2, 3, 4, 5):
        assert f"row {index}:" in message
    assert "row 0:" not in message and "model: No model" in message and "colour" in message
    assert PriceVersion.objects.count() == before


@pytest.mark.parametrize(("name", "text"), [("p.yaml", "- [unclosed"), ("p.json", "{nope"), ("p.yaml", "a: 1")])
def test_load_prices_rejects_unreadable_files(tmp_path, models, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(CommandError):
        run("load_prices", str(path))


def test_load_prices_on_a_missing_file(tmp_path):
    with pytest.raises(CommandError, match="no such file"):
        run("load_prices", str(tmp_path / "missing.yaml"))


# --- reconcile_usage ---------------------------------------------------------------------------------------------


def test_reconcile_usage_reports_and_fixes_drift(allocation):
    now = timezone.now()
    CallRecord.objects.create(
        request_id="r",
        allocation=allocation,
        endpoint="chat.completions",
        started_at=now,
        outcome="success",
        input_tokens=7,
        output_tokens=3,
        cost_usd=Decimal("0.25"),
        priced=True,
    )
    roll_up_records()
    UsageCounter.objects.create(allocation=allocation, period_start=period_start_date(now), tokens_used=99)
    output = run("reconcile_usage")
    assert str(allocation.pk) in output and "tokens counter 99 vs records 10" in output and "--fix" in output
    assert UsageCounter.objects.get().tokens_used == 99
    output = run("reconcile_usage", "--fix")
    assert "Fixed 1" in output
    counter = UsageCounter.objects.get()
    assert (counter.tokens_used, counter.cost_used) == (10, Decimal("0.25"))
    assert AuditEvent.objects.get(action="usage_reconciled").after == {"tokens": 10, "cost": "0.250000000"}
    assert "No drift" in run("reconcile_usage")
