"""Audit events are append-only: not through the ORM, not in raw SQL, not through the admin."""

import pytest
from django.db import connection, transaction
from django.db.utils import DatabaseError
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from allocations.audit import audit_record
from allocations.models import AuditEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def event(staff, allocation):
    return audit_record(actor=staff, action="allocation_paused", target=allocation, before={"a": 1}, after={"a": 2})


def test_the_orm_refuses_to_change_or_delete_an_event(event):
    event.action = "forged"
    with pytest.raises(AuditEvent.Immutable):
        event.save()
    with pytest.raises(AuditEvent.Immutable):
        event.delete()
    with pytest.raises(AuditEvent.Immutable):
        AuditEvent.objects.filter(pk=event.pk).update(action="forged")
    with pytest.raises(AuditEvent.Immutable):
        AuditEvent.objects.all().delete()
    assert AuditEvent.objects.get(pk=event.pk).action == "allocation_paused"


@pytest.mark.parametrize(
    "sql", ["UPDATE allocations_auditevent SET action = 'forged'", "DELETE FROM allocations_auditevent"]
)
def test_the_database_refuses_update_and_delete_even_in_raw_sql(event, sql):
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql)
    assert AuditEvent.objects.get(pk=event.pk).action == "allocation_paused"


def test_a_superuser_can_read_but_not_add_change_or_delete_events_in_admin(client, staff, event):
    client.force_login(staff)
    change_url = reverse("admin:allocations_auditevent_change", args=[event.pk])
    page = client.get(change_url)
    assert page.status_code == 200
    assert b'name="_save"' not in page.content  # view-only
    assert client.post(change_url, {"action": "forged", "target_type": "x", "target_id": "y"}).status_code == 403
    assert client.get(reverse("admin:allocations_auditevent_delete", args=[event.pk])).status_code == 403
    assert (
        client.post(reverse("admin:allocations_auditevent_delete", args=[event.pk]), {"post": "yes"}).status_code == 403
    )
    assert client.get(reverse("admin:allocations_auditevent_add")).status_code == 403
    bulk = client.post(
        reverse("admin:allocations_auditevent_changelist"),
        {"action": "delete_selected", "_selected_action": [event.pk], "post": "yes"},
    )
    assert bulk.status_code in (200, 302)
    assert AuditEvent.objects.get(pk=event.pk).action == "allocation_paused"


def test_the_audit_list_never_counts_the_whole_table(client, staff, event):
    client.force_login(staff)
    with CaptureQueriesContext(connection) as queries:
        page = client.get(reverse("admin:allocations_auditevent_changelist"))
    assert page.status_code == 200 and b"allocation_paused" in page.content
    listed = [q["sql"] for q in queries.captured_queries if "auditevent" in q["sql"]]
    assert listed and not [sql for sql in listed if "COUNT(" in sql.upper() or "DISTINCT" in sql.upper()], listed
