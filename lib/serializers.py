"""What the JSON APIs' serializers share (HackSoft style: an input serializer parses a request body,
an output serializer shapes a response; domain rules stay in the services).

JSON has types, and the contract relies on them: a name is a string, a flag is `true`/`false`.
DRF's stock fields coerce (`7` → `"7"`, `"yes"` → `True`), so the APIs use the strict fields here.
"""

import datetime as dt
from collections.abc import Collection, Mapping
from decimal import Decimal
from typing import Any

from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.views import APIView

from .json_depth import API_PARSERS

NANO = Decimal("1e-9")


def money_str(value: Decimal | int | str | None) -> str | None:
    """Money in every JSON API: a fixed-point decimal string with the stored 9 places; None stays None."""
    return None if value is None else f"{Decimal(value).quantize(NANO):f}"


class StrictInputSerializer(serializers.Serializer):
    """A request body: a JSON object with only the fields the endpoint takes (else 400 naming them).

    A view's nested `InputSerializer` is named after its view in the OpenAPI schema
    (`MemberList.InputSerializer` → `MemberListInput`), so the nested classes never collide."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        owner, _, name = cls.__qualname__.rpartition(".")
        if not cls.__dict__.get("__doc__"):
            cls.__doc__ = ""  # the schema would otherwise repeat this docstring for every body
        if owner and "Meta" not in cls.__dict__:
            ref_name = owner.replace(".", "") + name.removesuffix("Serializer")
            cls.Meta = type("Meta", (), {"ref_name": ref_name})  # type: ignore[attr-defined]

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, Mapping):
            raise serializers.ValidationError({"non_field_errors": ["The body must be a JSON object."]})
        unknown = sorted(set(data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)


class QueryCheckedAPIView(APIView):
    """An API view whose query parameters are checked before any view code runs: PostgreSQL text
    cannot hold a NUL character, so a filter carrying one would fail in the database (500). Its
    JSON bodies nest at most lib.json_depth.MAX_JSON_DEPTH deep (else 400)."""

    parser_classes = API_PARSERS

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        bad = sorted({name for name, values in request.query_params.lists() for v in [name, *values] if "\x00" in v})
        if bad:
            raise serializers.ValidationError({name or "query": ["Must not contain a NUL character."] for name in bad})


def parse_input(serializer_class: type[serializers.Serializer], request: Request) -> dict:
    """Validates a request body with an input serializer; errors become the envelope's `fields`."""
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


class StrictCharField(serializers.CharField):
    default_error_messages = {"invalid": "Must be a string."}

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictEmailField(serializers.EmailField):
    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data).casefold()


class StrictBooleanField(serializers.BooleanField):
    default_error_messages = {"invalid": "Must be true or false."}

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


@extend_schema_field({"type": "string", "format": "date-time", "nullable": True})
class StrictAwareDateTimeField(serializers.Field):
    """An ISO 8601 date-time string with a time zone (a naive one would be read in some server's zone)."""

    default_error_messages = {"invalid": "An ISO 8601 date-time with a time zone, or null."}

    def to_internal_value(self, data: Any) -> dt.datetime:
        parsed = parse_datetime(data) if isinstance(data, str) else None
        if parsed is None or timezone.is_naive(parsed):
            self.fail("invalid")
        return parsed

    def to_representation(self, value: dt.datetime) -> str:
        return value.isoformat()


@extend_schema_field({"oneOf": [{"type": "string", "format": "decimal"}, {"type": "number"}], "nullable": True})
class DecimalInputField(serializers.Field):
    """An amount as a decimal string or a JSON number; the service that takes it checks its range."""

    default_error_messages = {"invalid": "A decimal string or a number."}

    def to_internal_value(self, data: Any) -> str | int | float:
        if isinstance(data, bool) or not isinstance(data, str | int | float):
            self.fail("invalid")
        return data

    def to_representation(self, value: Decimal | int | str | None) -> str | None:
        return money_str(value)


@extend_schema_field({"oneOf": [{"type": "integer", "minimum": 0}, {"type": "string"}], "nullable": True})
class WholeNumberInputField(DecimalInputField):
    default_error_messages = {"invalid": "A whole number."}

    def to_representation(self, value: Any) -> Any:
        return value


class RateLimitsInputMixin(serializers.Serializer):
    """The rate limits an allocation or a model takes (whole numbers ≥ 1, null: no limit); the
    services check the range."""

    rpm_limit = WholeNumberInputField(required=False, allow_null=True, help_text="Requests per minute.")
    tpm_limit = WholeNumberInputField(required=False, allow_null=True, help_text="Tokens per minute.")
    max_parallel = WholeNumberInputField(required=False, allow_null=True, help_text="Calls in flight at once.")


def split_limits(data: dict, names: Collection[str]) -> tuple[dict, dict]:
    """(the rate limits among the parsed fields, the other fields)."""
    return {n: v for n, v in data.items() if n in names}, {n: v for n, v in data.items() if n not in names}


@extend_schema_field({"type": "string", "format": "decimal", "nullable": True})
class MoneyField(serializers.Field):
    """Read-only money: a decimal string with 9 places, or null."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("read_only", True)
        super().__init__(**kwargs)

    def to_representation(self, value: Decimal | int | str | None) -> str | None:
        return money_str(value)


class UnderscoreNamesMixin:
    """A field whose name is a Python keyword or a serializer attribute (`from`, `fields`) is declared
    with a trailing underscore (`from_`) and read and rendered without it."""

    def get_fields(self) -> dict[str, serializers.Field]:
        return {name.removesuffix("_"): field for name, field in super().get_fields().items()}  # type: ignore[misc]
