"""A call record's columns as the settlement statements send them (quota.ledger.statements): each
field by its attname, else by its name (a key's object), else its default, in its JSON form (the
batch's rows) or its text (the statement of one call); checked against that rule written field by
field, for values of every kind and mixes of them (the forms are chosen once per mix of classes)."""

import datetime as dt
import itertools
import uuid
from decimal import Decimal

import pytest

from quota.ledger import statements
from quota.models import CallRecord, Outcome, PriceVersion

FIELDS = statements.CALL_FIELDS
NOW = dt.datetime(2026, 12, 7, 18, 0, 1, 250, tzinfo=dt.UTC)
PRICE = PriceVersion(pk=7)


def _by_rule(values: dict) -> list:
    """The record's column values by the rule, field by field."""
    found = []
    for f in FIELDS:
        if f.attname in values:
            found.append(values[f.attname])
        elif f.name in values:
            found.append(values[f.name])
        else:
            found.append(f.get_default())
    return found


def _json_form(value):
    if value is None or isinstance(value, (str, int, float, dict)):
        return value  # bools are ints
    if isinstance(value, (list, tuple)):
        return "{" + ",".join(map(str, value)) + "}"
    if isinstance(value, (Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, PriceVersion):
        return value.pk
    return statements._json_value(value)


def _text_form(value):
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dict):
        return statements._encode(value)
    if isinstance(value, (list, tuple)):
        return "{" + ",".join(map(str, value)) + "}"
    return str(value.pk)


BASE = {
    "request_id": "req-1",
    "endpoint": "chat.completions",
    "started_at": NOW,
    "is_stream": False,
    "api_key_id": str(uuid.UUID(int=1)),
    "member_id": str(uuid.UUID(int=2)),
    "allocation_id": str(uuid.UUID(int=3)),
    "model_id": str(uuid.UUID(int=4)),
    "deployment_id": None,
    "attempts": 1,
    "outcome": Outcome.SUCCESS,
    "status_code": 200,
    "error_code": "",
    "error_message": "",
    "ttft_ms": None,
    "group_ids": [],
    "finished_at": NOW,
    "input_tokens": 11,
    "output_tokens": 7,
    "cached_tokens": 3,
    "reasoning_tokens": 0,
    "audio_input_tokens": 0,
    "audio_output_tokens": 0,
    "quantity": None,
    "unit": "",
    "estimated": False,
    "service_tier": "",
    "tool_calls": {},
    "cost_usd": Decimal("0.000023500"),
    "priced": True,
    "price_version": PRICE,
}
# Each a change to BASE: another class in a column, a key given by its object or by both, a field left out.
CHANGES = (
    {"cost_usd": None, "priced": False, "price_version": None},
    {"price_version_id": 9},
    {"price_version_id": 9, "price_version": PRICE},  # the attname wins
    {"deployment_id": uuid.UUID(int=5), "attempts": 2, "status_code": None, "ttft_ms": 0},
    {"quantity": Decimal("1.5"), "unit": "image", "tool_calls": {"web_search": 2}, "group_ids": [uuid.UUID(int=6)]},
    {"finished_at": None, "outcome": "gateway_error", "close_reason": "shutdown"},
    {"api_key_id": uuid.UUID(int=1), "member_id": None},
)


def _values(changes: tuple) -> dict:
    values = dict(BASE)
    for change in changes:
        values.update(change)
    return values


CASES = [()] + [(c,) for c in CHANGES] + list(itertools.combinations(CHANGES, 2))


@pytest.mark.parametrize("changes", CASES, ids=range(len(CASES)))
def test_a_records_columns_are_its_fields_by_attname_name_or_default_in_their_forms(changes):
    values = _values(changes)
    columns = _by_rule(values)
    assert statements._record_row(values) == [_json_form(v) for v in columns]
    assert statements._record_parameters(values) == [_text_form(v) for v in columns]


def test_a_record_without_some_fields_takes_their_defaults():
    values = {"request_id": "req-2", "endpoint": "embeddings", "started_at": NOW, "outcome": "success"}
    columns = dict(zip((f.attname for f in FIELDS), statements._record_row(values), strict=True))
    assert columns["tool_calls"] == {} and columns["group_ids"] == "{}" and columns["price_version_id"] is None
    assert (columns["input_tokens"], columns["priced"], columns["close_reason"]) == (0, False, "")
    assert statements._record_parameters(values)[len(FIELDS) - 2] == "{}"  # group_ids, as text
    assert [f.attname for f in FIELDS] == [f.attname for f in CallRecord._meta.concrete_fields][1:]


def test_the_same_classes_in_other_columns_take_each_columns_own_form():
    """The forms are chosen by the classes of the values: two records whose values have the same
    classes share that choice, whatever their values."""
    first = _values(({"cost_usd": Decimal("1.5")},))
    second = _values(({"cost_usd": Decimal("2.25"), "started_at": NOW + dt.timedelta(seconds=1)},))
    for values in (first, second, first):
        assert statements._record_row(values) == [_json_form(v) for v in _by_rule(values)]
        assert statements._record_parameters(values) == [_text_form(v) for v in _by_rule(values)]


@pytest.mark.parametrize("changes", CASES, ids=range(len(CASES)))
def test_a_records_columns_are_of_their_forms_classes_and_unformed_values_are_passed_as_they_are(changes):
    """Equal is not enough (True == 1, an enum member == its text): each column's class is its
    form's, and a value without a form (a str, an enum member, None) is the very object given."""
    values = _values(changes)
    columns = _by_rule(values)
    for formed, form in (
        (statements._record_row(values), _json_form),
        (statements._record_parameters(values), _text_form),
    ):
        assert type(formed) is list
        assert [type(v) for v in formed] == [type(form(v)) for v in columns]
        for value, column in zip(formed, columns, strict=True):
            if column is None or isinstance(column, str):
                assert value is column
