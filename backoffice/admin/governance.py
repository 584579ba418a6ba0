"""Django admin for the governance objects that need no usage figures: members, providers, models,
keys, admin tokens and the audit trail.

Every save, action and delete goes through allocations.services, so each change is audited;
allocations themselves (which show usage) are administered from backoffice/admin/usage.py.
"""

from django import forms
from django.contrib import admin, messages

from allocations import services
from allocations.models import AdminToken, ApiKey, AuditEvent, CatalogModel, Member, Provider, ProviderKind

from .base import ReadOnlyListMixin, simulated_badge

# --- members ----------------------------------------------------------------------------------------


class MemberAddForm(forms.ModelForm):
    password = forms.CharField(
        widget=forms.PasswordInput, required=False, help_text="Blank: the member cannot log in with a password."
    )

    class Meta:
        model = Member
        fields = ("username", "email", "is_staff", "is_superuser")

    def clean_username(self):
        username = (self.cleaned_data.get("username") or "").strip().casefold()
        if Member.objects.filter(username=username).exists():
            raise forms.ValidationError("A member with that username already exists.")
        return username


@admin.register(Member)
class MemberAdmin(admin.ModelAdmin):
    list_display = ("username", "email", "is_active", "is_staff", "is_superuser", "last_login", "date_joined")
    list_filter = ("is_active", "is_staff", "is_superuser")
    search_fields = ("username", "email")
    ordering = ("username",)
    fields = ("username", "email", "is_active", "is_staff", "is_superuser", "last_login", "date_joined")
    readonly_fields = ("username", "email", "is_staff", "is_superuser", "last_login", "date_joined")

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = MemberAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request, obj=None):
        return ("username", "email", "password", "is_staff", "is_superuser") if obj is None else self.fields

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else self.readonly_fields

    def save_model(self, request, obj, form, change):
        if change:
            fresh = Member.objects.get(pk=obj.pk)
            services.member_set_active(member=fresh, is_active=form.cleaned_data["is_active"], actor=request.user)
            return
        created = services.member_create(
            username=form.cleaned_data["username"],
            email=form.cleaned_data.get("email", ""),
            password=form.cleaned_data.get("password") or None,
            is_staff=form.cleaned_data.get("is_staff", False),
            is_superuser=form.cleaned_data.get("is_superuser", False),
            actor=request.user,
        )
        obj.pk, obj._state.adding = created.pk, False

    def save_related(self, request, form, formsets, change):
        """Groups and permissions are not edited here; nothing else to save."""

    def has_delete_permission(self, request, obj=None):
        return False  # members are disabled, never deleted: the audit trail points at them


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

    def clean(self):
        data = super().clean()
        kind = data.get("kind") or (self.instance.kind if self.instance.pk else "")
        if kind and kind != ProviderKind.SIMULATED and not data.get("base_url"):
            self.add_error("base_url", "Required for an OpenAI-compatible or Azure provider.")
        return data


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    form = ProviderForm
    list_display = ("name", "kind_label", "base_url", "api_version", "status", "key_fingerprint")
    list_filter = ("kind", "status")
    search_fields = ("name", "base_url")
    readonly_fields = ("key_fingerprint", "created_at", "updated_at")

    @admin.display(description="kind", ordering="kind")
    def kind_label(self, obj):
        return simulated_badge(obj.kind) or obj.get_kind_display()

    def get_readonly_fields(self, request, obj=None):
        return ("kind", *self.readonly_fields) if obj else self.readonly_fields

    def save_model(self, request, obj, form, change):
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
            provider=fresh, changes={f: data[f] for f in services.PROVIDER_UPDATABLE}, actor=request.user
        )
        if data["status"] != fresh.status:
            services.provider_set_status(provider=fresh, status=data["status"], actor=request.user)
        if data.get("api_key"):
            services.provider_rotate_key(provider=fresh, api_key=data["api_key"], actor=request.user)

    def has_delete_permission(self, request, obj=None):
        return False  # disable instead: models and call records point at providers


class CatalogModelForm(forms.ModelForm):
    class Meta:
        model = CatalogModel
        fields = ("slug", "provider", "upstream_name", "kind", "display_name", "is_active")


@admin.register(CatalogModel)
class CatalogModelAdmin(admin.ModelAdmin):
    form = CatalogModelForm
    list_display = ("slug", "kind", "provider", "provider_label", "upstream_name", "display_name", "is_active")
    list_filter = ("kind", "is_active", "provider")
    search_fields = ("slug", "upstream_name", "display_name")
    list_select_related = ("provider",)

    @admin.display(description="provider kind")
    def provider_label(self, obj):
        return simulated_badge(obj.provider.kind) or obj.provider.get_kind_display()

    def get_readonly_fields(self, request, obj=None):
        return ("slug", "provider", "upstream_name", "kind", "display_name") if obj else ()

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        if change:
            fresh = CatalogModel.objects.get(pk=obj.pk)
            if fresh.is_active != data["is_active"]:
                services.model_set_active(model=fresh, is_active=data["is_active"], actor=request.user)
            return
        created = services.model_create(
            slug=data["slug"],
            provider=data["provider"],
            upstream_name=data["upstream_name"],
            kind=data["kind"],
            display_name=data.get("display_name", ""),
            actor=request.user,
        )
        if not data["is_active"]:
            services.model_set_active(model=created, is_active=False, actor=request.user)
        obj.pk, obj._state.adding = created.pk, False

    def has_delete_permission(self, request, obj=None):
        return False


# --- keys and tokens -----------------------------------------------------------------------------


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("prefix", "name", "member", "is_default", "created_at", "rotated_at", "revoked_at", "last_used_at")
    list_filter = ("is_default", ("revoked_at", admin.EmptyFieldListFilter))
    search_fields = ("prefix", "name", "member__username")
    list_select_related = ("member",)
    fields = ("prefix", "name", "member", "is_default", "scope", "created_at", "rotated_at", "revoked_at")
    readonly_fields = fields
    actions = ("revoke_keys",)

    @admin.display(description="scope")
    def scope(self, obj):
        return ", ".join(s.allocation.model.slug for s in obj.scopes.select_related("allocation__model"))

    @admin.action(description="Revoke selected keys")
    def revoke_keys(self, request, queryset):
        for key in queryset:
            services.api_key_revoke(key=key, actor=request.user)
        self.message_user(request, f"{queryset.count()} key(s) revoked.", messages.SUCCESS)

    def has_add_permission(self, request):
        return False  # keys are minted with allocations or by members in the portal

    def has_change_permission(self, request, obj=None):
        return False  # read-only; the revoke action goes through the service

    def has_delete_permission(self, request, obj=None):
        return False


class AdminTokenForm(forms.ModelForm):
    class Meta:
        model = AdminToken
        fields = ("user",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["user"].queryset = Member.objects.filter(is_staff=True, is_active=True)


@admin.register(AdminToken)
class AdminTokenAdmin(admin.ModelAdmin):
    form = AdminTokenForm
    list_display = ("prefix", "user", "created_at", "revoked_at")
    list_select_related = ("user",)
    readonly_fields = ("prefix", "user", "created_at", "revoked_at")
    actions = ("revoke_tokens",)

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj else ()

    def save_model(self, request, obj, form, change):
        plaintext = services.admin_token_create(user=form.cleaned_data["user"])
        token = AdminToken.objects.get(token_hash=ApiKey.hash(plaintext))
        obj.pk, obj._state.adding = token.pk, False
        self.message_user(request, f"Admin token (shown once, copy it now): {plaintext}", messages.WARNING)

    @admin.action(description="Revoke selected admin tokens")
    def revoke_tokens(self, request, queryset):
        for token in queryset:
            services.admin_token_revoke(token=token, actor=request.user)
        self.message_user(request, f"{queryset.count()} token(s) revoked.", messages.SUCCESS)

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


# --- audit -------------------------------------------------------------------------------------------


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyListMixin, admin.ModelAdmin):
    list_display = ("created_at", "action", "actor_label", "target_type", "target_id", "source_ip")
    list_filter = ("action", "target_type")
    search_fields = ("=target_id", "=action", "=actor_label")
    ordering = ("-created_at", "-id")
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

    def get_actions(self, request):
        return {}  # not even "delete selected"
