"""Django admin for the governance objects that need no usage figures: members, providers, models,
keys and the audit trail (members and admin tokens: backoffice/admin/members.py).

Every save, action and delete goes through allocations.services, so each change is audited;
allocations themselves (which show usage) are administered from backoffice/admin/usage.py.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.db import transaction
from django.db.models import Model, QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from allocations import services
from allocations.cost_options import ALLOWED_OPTIONS, OPTION_LABELS, extra_client_tools_clean
from allocations.exceptions import BadRequest, GatewayError
from allocations.groups import ACCESS_FIELDS, model_access_update
from allocations.models import Allocation, ApiKey, AuditEvent, CatalogModel, Member, Provider, ProviderKind
from allocations.selfservice import SELF_SERVICE_FIELDS, model_set_self_service

from .base import ReadOnlyListMixin, StaffAdmin, confirmed_or_page, form_errors_from, simulated_badge
from .deployments import DeploymentInline, deployments_save, test_connection, test_connection_billable
from .groups import model_access_display
from .lists import KEYSET_TEMPLATE, KeysetChangeList, fixed_choices_filter

if TYPE_CHECKING:
    from django.contrib.admin.options import _FieldGroups
    from django.utils.datastructures import _ListOrTuple


# --- providers and models --------------------------------------------------------------------------


class ProviderForm(forms.ModelForm):
    base_url = forms.URLField(required=False, max_length=500, assume_scheme="https")
    api_key = forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False),
        help_text="Write-only. Stored encrypted; only its fingerprint is shown. Enter a new key to rotate it.",
    )

    class Meta:
        model = Provider
        fields = ("name", "kind", "base_url", "api_version", "status")

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        assert data is not None  # Django's clean() returns cleaned_data
        kind = data.get("kind") or (self.instance.kind if self.instance.pk else "")
        if kind and kind != ProviderKind.SIMULATED and not data.get("base_url"):
            self.add_error("base_url", "Required for an OpenAI-compatible or Azure provider.")
        if self.instance.pk:
            changes = {f: data[f] for f in services.PROVIDER_KEY_BOUND if f in data}
            try:
                services.provider_key_check(provider=self.instance, changes=changes, api_key=data.get("api_key", ""))
            except GatewayError as exc:
                form_errors_from(exc, self)
        return data


@admin.register(Provider)
class ProviderAdmin(StaffAdmin):
    form = ProviderForm
    list_display = ("name", "kind_label", "base_url", "api_version", "status", "key_fingerprint")
    list_filter = ("kind", "status")
    search_fields = ("name", "base_url")
    readonly_fields = ("key_fingerprint", "created_at", "updated_at")
    actions = (test_connection, test_connection_billable)

    @admin.display(description=_("kind"), ordering="kind")
    def kind_label(self, obj: Provider) -> str:
        return simulated_badge(obj.kind) or obj.get_kind_display()

    def get_readonly_fields(self, request: HttpRequest, obj: Model | None = None) -> _ListOrTuple[str]:
        return ("kind", *self.readonly_fields) if obj else self.readonly_fields

    def save_model(self, request: HttpRequest, obj: Provider, form: forms.ModelForm[Provider], change: bool) -> None:
        data = form.cleaned_data
        if not change:
            created = services.provider_create(
                name=data["name"],
                kind=data["kind"],
                base_url=data.get("base_url", ""),
                api_key=data.get("api_key", ""),
                api_version=data.get("api_version", ""),
                actor=request.user,
            )
            if data["status"] != created.status:
                services.provider_set_status(provider=created, status=data["status"], actor=request.user)
            obj.pk, obj._state.adding = created.pk, False
            return
        fresh = Provider.objects.get(pk=obj.pk)
        services.provider_update(
            provider=fresh,
            changes={f: data[f] for f in services.PROVIDER_UPDATABLE},
            api_key=data.get("api_key", ""),
            actor=request.user,
        )
        if data["status"] != fresh.status:
            services.provider_set_status(provider=fresh, status=data["status"], actor=request.user)

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False  # disable instead: models and call records point at providers


class CatalogModelForm(forms.ModelForm):
    allowed_options = forms.MultipleChoiceField(
        choices=[(name, OPTION_LABELS[name]) for name in ALLOWED_OPTIONS],
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="Request options that cost more than tokens, let through for this model. Each also needs "
        "its price (a service tier multiplier or a tool-call price) in the price version in force; "
        "background is relayed only streamed.",
    )
    extra_client_tools = forms.CharField(
        required=False,
        help_text="Tool types, comma-separated, beyond function, custom, local_shell, apply_patch and namespace "
        "that this model lets through as run by the client; any other unknown tool type is refused.",
    )

    access = forms.ChoiceField(
        choices=[("open", "open"), ("restricted", "restricted")],
        required=False,
        help_text="open: every member but those of a denied group; restricted: members of an allowed group only. "
        "A denied group always wins.",
    )

    class Meta:
        model = CatalogModel
        fields = (
            "slug",
            "provider",
            "upstream_name",
            "kind",
            "display_name",
            "is_active",
            "rpm_limit",
            "tpm_limit",
            "max_parallel",
            "allowed_options",
            "unpriced_tools",
            "extra_client_tools",
            "drop_unsupported_params",
            *SELF_SERVICE_FIELDS,
            "access",
            "allowed_groups",
            "denied_groups",
        )
        help_texts = {
            "unpriced_tools": "A built-in tool (web search, file search, ...) this model does not allow and price: "
            "remove it from the request (the answer names it in x-gateway-removed-tools) or refuse the call.",
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["unpriced_tools"].required = False  # a form posted without it keeps the rule
        if self.instance.pk:
            self.initial["extra_client_tools"] = ", ".join(self.instance.extra_client_tools or ())

    def clean_unpriced_tools(self) -> str:
        return self.cleaned_data.get("unpriced_tools") or self.instance.unpriced_tools or "remove"

    def clean_access(self) -> str:
        return self.cleaned_data.get("access") or self.instance.access or "open"

    def clean_extra_client_tools(self) -> list[str]:
        names = [name.strip() for name in (self.cleaned_data.get("extra_client_tools") or "").split(",")]
        try:
            return extra_client_tools_clean([name for name in names if name])
        except BadRequest as error:
            raise forms.ValidationError(error.message) from None


@admin.register(CatalogModel)
class CatalogModelAdmin(StaffAdmin):
    form = CatalogModelForm
    inlines = (DeploymentInline,)
    list_display = (
        "slug",
        "kind",
        "provider",
        "provider_label",
        "is_active",
        "rpm_limit",
        "tpm_limit",
        "max_parallel",
        "self_service",
    )
    list_filter = ("kind", "is_active", "self_service", "provider")
    search_fields = ("slug", "upstream_name", "display_name")
    list_select_related = ("provider",)

    @admin.display(description=_("provider kind"))
    def provider_label(self, obj: CatalogModel) -> str:
        return simulated_badge(obj.provider.kind) or obj.provider.get_kind_display()

    filter_horizontal = ("allowed_groups", "denied_groups")

    def get_readonly_fields(self, request: HttpRequest, obj: Model | None = None) -> _ListOrTuple[str]:
        return ("slug", "provider", "upstream_name", "kind", "display_name", "who_may_use") if obj else ()

    def get_fields(self, request: HttpRequest, obj: Model | None = None) -> _FieldGroups:
        fields = list(super().get_fields(request, obj))
        return [f for f in fields if f != "who_may_use"] + (["who_may_use"] if obj else [])

    @admin.display(description=_("who may use it"))
    def who_may_use(self, obj: CatalogModel) -> str:
        return model_access_display(obj)

    def save_related(
        self,
        request: HttpRequest,
        form: forms.ModelForm[CatalogModel],
        formsets: list[forms.BaseInlineFormSet],
        change: bool,
    ) -> None:
        """The access policy is saved by save_model and the deployments by save_formset, each
        through its service (audited); nothing is saved behind them (no form.save_m2m)."""
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)

    def save_model(
        self, request: HttpRequest, obj: CatalogModel, form: forms.ModelForm[CatalogModel], change: bool
    ) -> None:
        data = form.cleaned_data
        policy = {f: [g.slug for g in data[f]] if f != "access" else data[f] for f in ACCESS_FIELDS}
        if change:
            fresh = CatalogModel.objects.get(pk=obj.pk)
            changes = {f: data[f] for f in form.changed_data if f in services.MODEL_UPDATABLE}
            with transaction.atomic():
                services.model_update(model=fresh, changes=changes, actor=request.user)
                self_service = {f: data[f] for f in form.changed_data if f in SELF_SERVICE_FIELDS}
                if self_service:
                    model_set_self_service(model=fresh, changes=self_service, actor=request.user)
                model_access_update(model=fresh, changes=policy, actor=request.user)
            return
        created = services.model_create(
            slug=data["slug"],
            provider=data["provider"],
            upstream_name=data["upstream_name"],
            kind=data["kind"],
            display_name=data.get("display_name", ""),
            limits={f: data.get(f) for f in CatalogModel.LIMIT_FIELDS},
            allowed_options=data.get("allowed_options") or [],
            unpriced_tools=data.get("unpriced_tools") or "remove",
            extra_client_tools=data.get("extra_client_tools") or [],
            actor=request.user,
        )
        if not data["is_active"]:
            services.model_set_active(model=created, is_active=False, actor=request.user)
        if data.get("drop_unsupported_params"):
            services.model_update(model=created, changes={"drop_unsupported_params": True}, actor=request.user)
        if data.get("self_service"):
            changes = {f: data.get(f) for f in SELF_SERVICE_FIELDS}
            model_set_self_service(model=created, changes=changes, actor=request.user)
        model_access_update(model=created, changes=policy, actor=request.user)
        obj.pk, obj._state.adding = created.pk, False

    def save_formset(
        self, request: HttpRequest, form: forms.ModelForm[CatalogModel], formset: forms.BaseInlineFormSet, change: bool
    ) -> None:
        deployments_save(request=request, model=CatalogModel.objects.get(pk=form.instance.pk), formset=formset)

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


# --- keys and tokens -----------------------------------------------------------------------------


class ApiKeyForm(forms.ModelForm):
    class Meta:
        model = ApiKey
        fields = ("expires_at",)

    def clean_expires_at(self) -> dt.datetime | None:
        value = self.cleaned_data.get("expires_at")
        if value is not None and value != self.instance.expires_at and value <= timezone.now():
            raise forms.ValidationError("Choose a future date and time (blank: the key never expires).")
        return value


@admin.register(ApiKey)
class ApiKeyAdmin(StaffAdmin):
    form = ApiKeyForm
    list_display = (
        "prefix",
        "name",
        "member",
        "is_default",
        "created_at",
        "expires_at",
        "rotated_at",
        "revoked_at",
        "last_used_at",
    )
    list_filter = ("is_default", ("revoked_at", admin.EmptyFieldListFilter), ("expires_at", admin.EmptyFieldListFilter))
    search_fields = ("prefix", "name", "member__username")
    list_select_related = ("member",)
    fields = ("prefix", "name", "member", "is_default", "scope", "created_at", "expires_at", "rotated_at", "revoked_at")
    readonly_fields = tuple(f for f in fields if f != "expires_at")  # the expiry is the one thing admins edit
    actions = ("revoke_keys",)

    @admin.display(description=_("scope"))
    def scope(self, obj: ApiKey) -> str:
        return ", ".join(s.allocation.model.slug for s in obj.scopes.select_related("allocation__model"))

    @admin.action(description=_("Revoke selected keys"), permissions=["revoke"])
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> HttpResponse | None:
        page = confirmed_or_page(self, request, queryset, action="revoke_keys", what="API key(s)")
        if page is not None:
            return page
        for key in queryset:
            services.api_key_revoke(key=key, actor=request.user)
        self.message_user(request, f"{queryset.count()} key(s) revoked.", messages.SUCCESS)
        return None

    def get_readonly_fields(self, request: HttpRequest, obj: Model | None = None) -> _ListOrTuple[str]:
        return self.fields if isinstance(obj, ApiKey) and obj.is_revoked else self.readonly_fields

    def save_model(self, request: HttpRequest, obj: ApiKey, form: forms.ModelForm[ApiKey], change: bool) -> None:
        fresh = ApiKey.objects.get(pk=obj.pk)
        services.api_key_set_expiry(key=fresh, expires_at=form.cleaned_data.get("expires_at"), actor=request.user)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # keys are minted with allocations or by members in the portal

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


# --- audit -------------------------------------------------------------------------------------------


ACTION_LABELS = {
    "allocation_created": "allocation created",
    "allocation_updated": "allocation edited",
    "allocation_cost_quota_updated": "cost cap changed",
    "allocation_token_quota_updated": "token quota changed",
    "allocation_paused": "allocation paused",
    "allocation_resumed": "allocation resumed",
    "allocation_revoked": "allocation revoked (final)",
    "allocation_quarantined": "allocation quarantined",
    "allocation_unquarantined": "allocation released from quarantine",
    "allocation_anomaly_detected": "unusual traffic detected",
    "key_created": "API key created",
    "key_renamed": "API key renamed",
    "key_rotated": "API key rotated",
    "key_revoked": "API key revoked",
    "member_created": "member created",
    "member_enabled": "member enabled or disabled",
    "member_password_set": "password set",
    "member_roles_updated": "roles changed",
    "login_succeeded": "signed in",
    "login_failed": "sign-in failed",
    "logged_out": "signed out",
    "provider_created": "provider created",
    "provider_updated": "provider edited",
    "provider_key_rotated": "provider key rotated",
    "provider_status_updated": "provider status changed",
    "model_created": "model created",
    "model_updated": "model edited",
    "price_version_added": "price version added",
    "admin_token_created": "admin token created",
    "admin_token_revoked": "admin token revoked",
    "usage_reconciled": "usage counters reconciled",
    "group_usage_reconciled": "group usage counters reconciled",
    "usage_drift_detected": "usage drift detected",
    "rollups_rebuilt": "daily rollups rebuilt",
}
TARGET_MODELS: dict[str, type[Member | Allocation | ApiKey | Provider | CatalogModel]] = {
    "member": Member,
    "allocation": Allocation,
    "apikey": ApiKey,
    "provider": Provider,
    "catalogmodel": CatalogModel,
}  # every one keyed by a UUID


class AuditChangeList(KeysetChangeList):
    """Loads the page's targets in one query per target type, for their names and links."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        wanted: dict[str, set] = {}
        for event in self.result_list:
            wanted.setdefault(event.target_type, set()).add(event.target_id)
        found = {}
        for target_type, ids in wanted.items():
            model = TARGET_MODELS.get(target_type)
            if model is not None:
                valid = [i for i in ids if _is_uuid(i)]
                found.update({(target_type, str(pk)): obj for pk, obj in model.objects.in_bulk(valid).items()})
        for event in self.result_list:
            event.target_obj = found.get((event.target_type, event.target_id))


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyListMixin, StaffAdmin):
    list_display = ("created_at", "action_label", "actor_label", "target", "source_ip")
    # Fixed values, never SELECT DISTINCT over the events: the actions people look for by name
    # (any other is found by typing it in the search box) and the types of target.
    list_filter = (
        fixed_choices_filter("action", "action", sorted(ACTION_LABELS.items(), key=lambda item: item[1])),
        fixed_choices_filter("target_type", "target type", [(name, name) for name in TARGET_MODELS]),
    )
    search_fields = ("=target_id", "=action", "=actor_label")
    ordering = ("-created_at", "-id")
    keyset = ("created_at", "id")
    change_list_template = KEYSET_TEMPLATE
    fields = (
        "created_at",
        "action",
        "actor_label",
        "target_type",
        "target_id",
        "before",
        "after",
        "source_ip",
        "request_id",
    )
    readonly_fields = fields

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return AuditChangeList

    @admin.display(description=_("action"), ordering="action")
    def action_label(self, obj: AuditEvent) -> str:
        return ACTION_LABELS.get(obj.action, obj.action.replace("_", " "))

    @admin.display(description=_("target"))
    def target(self, obj: AuditEvent) -> str:
        found = getattr(obj, "target_obj", None)
        if found is None:
            return f"{obj.target_type} {obj.target_id}"
        url = reverse(f"admin:{found._meta.app_label}_{found._meta.model_name}_change", args=[found.pk])
        return format_html('{} <a href="{}">{}</a>', found._meta.verbose_name, url, str(found))

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        return {}  # not even "delete selected"
