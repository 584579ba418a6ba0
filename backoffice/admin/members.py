"""Django admin for members and admin tokens.

Every active staff member governs members (disable, enable, staff flag, email, password); only a
superuser makes or unmakes a superuser, changes a superuser's password, email or flags, links an
account to a single sign-on identity, or mints an admin token for someone else. The last active
admin can be neither disabled nor demoted: the form says so before anything is written, and the
service checks again with the admins' rows locked. Every change goes through allocations.services.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.password_validation import validate_password
from django.db import transaction
from django.db.models import Model, QuerySet
from django.http import HttpRequest
from django.utils.translation import gettext, gettext_lazy

from allocations import services
from allocations.exceptions import GatewayError
from allocations.members import MEMBER_UPDATABLE, SUPERUSER_TARGET, last_admin_check
from allocations.models import AdminToken, ApiKey, Group, Member
from allocations.requests import MemberRequest

from .base import StaffAdmin, form_errors_from
from .groups import add_to_group_action, member_access_display, member_groups_display
from .marks import member_link

if TYPE_CHECKING:
    from django.contrib.admin.options import _FieldGroups
    from django.utils.datastructures import _ListOrTuple


class MemberAddForm(forms.ModelForm):
    password = forms.CharField(
        widget=forms.PasswordInput, required=False, help_text="Blank: the member cannot log in with a password."
    )

    class Meta:
        model = Member
        fields = ("username", "email", "is_staff", "is_superuser")

    def clean_username(self) -> str:
        username = (self.cleaned_data.get("username") or "").strip().casefold()
        if Member.objects.filter(username=username).exists():
            raise forms.ValidationError("A member with that username already exists.")
        return username

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        assert data is not None  # Django's clean() returns cleaned_data
        if data.get("password"):  # the password policy, with the new member's name and email in view
            candidate = Member(username=data.get("username") or "", email=data.get("email") or "")
            try:
                validate_password(data["password"], user=candidate)
            except forms.ValidationError as exc:
                self.add_error("password", exc)
        return data


class MemberChangeForm(forms.ModelForm):
    new_password = forms.CharField(
        widget=forms.PasswordInput(render_value=False),
        required=False,
        strip=False,
        help_text="Write-only. Blank keeps the current password. The audit trail records the change, never the hash.",
    )

    acting_user = None  # set per request by MemberAdmin.get_form

    class Meta:
        model = Member
        fields = ("email", "is_active", "is_staff", "is_superuser", "sso_subject")

    def clean_new_password(self) -> str | None:
        password = self.cleaned_data.get("new_password")
        if password:
            validate_password(password, user=self.instance)
        return password

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        assert data is not None  # Django's clean() returns cleaned_data
        guarded = {"email", "is_active", "is_staff", "new_password"}.intersection(self.changed_data)
        if guarded and self.instance.is_superuser and not getattr(self.acting_user, "is_superuser", False):
            raise forms.ValidationError(SUPERUSER_TARGET.capitalize() + ".")
        try:
            last_admin_check(
                member=self.instance,
                is_active=data.get("is_active", self.instance.is_active),
                is_staff=data.get("is_staff", self.instance.is_staff),
            )
        except GatewayError as exc:
            form_errors_from(exc, self, default_field="is_active")
        return data


@admin.register(Member)
class MemberAdmin(StaffAdmin):
    list_display = ("username", "email", "is_active", "is_staff", "is_superuser", "last_login", "page")
    list_filter = ("is_active", "is_staff", "is_superuser")
    search_fields = ("username", "email")
    ordering = ("username",)
    fields = (
        "username",
        "email",
        "is_active",
        "is_staff",
        "is_superuser",
        "new_password",
        "sso_subject",
        "last_login",
        "date_joined",
        "groups_list",
        "model_access",
    )
    readonly_fields = ("username", "last_login", "date_joined", "groups_list", "model_access")

    @admin.display(description=gettext_lazy("groups"))
    def groups_list(self, obj: Member) -> str:
        return member_groups_display(obj)

    @admin.display(description=gettext_lazy("model access"))
    def model_access(self, obj: Member) -> str:
        return member_access_display(obj)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions: dict[str, Any] = super().get_actions(request)
        for group in Group.objects.order_by("name"):
            action, name, description = add_to_group_action(group)
            actions[name] = (action, name, description)
        return actions

    @admin.display(description=gettext_lazy("member page"))
    def page(self, obj: Member) -> str:
        return member_link(obj, gettext("open"))

    def get_form(
        self, request: HttpRequest, obj: Model | None = None, change: bool = False, **kwargs: Any
    ) -> type[forms.ModelForm[Any]]:
        kwargs["form"] = MemberChangeForm if obj is not None else MemberAddForm
        form = super().get_form(request, obj, change=change, **kwargs)
        form.acting_user = request.user  # type: ignore[attr-defined]  # a MemberChangeForm class made for this request
        return form

    def get_fields(self, request: HttpRequest, obj: Model | None = None) -> _FieldGroups:
        if obj is None:
            add = ("username", "email", "password", "is_staff", "is_superuser")
            return add if request.user.is_superuser else add[:-1]
        return self.fields

    def get_readonly_fields(self, request: HttpRequest, obj: Model | None = None) -> _ListOrTuple[str]:
        if obj is None:
            return ()
        if request.user.is_superuser:
            return self.readonly_fields
        return (*self.readonly_fields, "is_superuser", "sso_subject")  # a link signs in as the member

    def save_model(self, request: HttpRequest, obj: Member, form: forms.ModelForm[Member], change: bool) -> None:
        data = form.cleaned_data
        if not change:
            created = services.member_create(
                username=data["username"],
                email=data.get("email", ""),
                password=data.get("password") or None,
                is_staff=data.get("is_staff", False),
                is_superuser=data.get("is_superuser", False) and request.user.is_superuser,
                actor=request.user,
            )
            obj.pk, obj._state.adding = created.pk, False
            return
        try:
            with transaction.atomic():  # all of the form's changes, or none of them
                self._save_changes(request, Member.objects.get(pk=obj.pk), form)
        except GatewayError as exc:  # a concurrent change won the race the form's check could not see
            self.message_user(request, exc.message, messages.ERROR)

    @staticmethod
    def _save_changes(request: HttpRequest, member: Member, form: forms.ModelForm[Member]) -> None:
        data, changed = form.cleaned_data, form.changed_data
        if "is_superuser" in changed and request.user.is_superuser:
            member = services.member_set_roles(
                member=member,
                is_staff=data["is_staff"] or data["is_superuser"],
                is_superuser=data["is_superuser"],
                actor=request.user,
            )
        updates = {f: data[f] for f in changed if f in MEMBER_UPDATABLE}
        if updates:
            member = services.member_update(member=member, changes=updates, actor=request.user)
        if "sso_subject" in changed:
            member = services.member_link_sso(member=member, subject=data["sso_subject"], actor=request.user)
        if data.get("new_password"):
            services.member_set_password(member=member, password=data["new_password"], actor=request.user)

    def save_related(
        self, request: HttpRequest, form: forms.ModelForm[Member], formsets: list[forms.BaseInlineFormSet], change: bool
    ) -> None:
        """Groups and permissions are not edited here: staff = admin."""


class AdminTokenForm(forms.ModelForm):
    expires_days = forms.IntegerField(
        required=False, min_value=1, max_value=3650, help_text="Optional: the token stops working after this many days."
    )

    class Meta:
        model = AdminToken
        fields = ("user",)

    def __init__(self, *args: Any, request: MemberRequest | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        staff = Member.objects.filter(is_staff=True, is_active=True)
        if request is not None and not request.user.is_superuser:
            staff = staff.filter(pk=request.user.pk)  # only a superuser mints for someone else
            self.fields["user"].initial = request.user.pk
        self.fields["user"].queryset = staff  # type: ignore[attr-defined]  # a ModelChoiceField


@admin.register(AdminToken)
class AdminTokenAdmin(StaffAdmin):
    form = AdminTokenForm
    list_display = ("prefix", "user", "created_at", "expires_at", "last_used_at", "revoked_at")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter),)
    list_select_related = ("user",)
    readonly_fields = ("prefix", "user", "created_at", "expires_at", "last_used_at", "revoked_at")
    actions = ("revoke_tokens",)

    def get_form(
        self, request: HttpRequest, obj: Model | None = None, change: bool = False, **kwargs: Any
    ) -> type[forms.ModelForm[Any]]:
        form = super().get_form(request, obj, change=change, **kwargs)

        class RequestForm(form):  # type: ignore[valid-type,misc]
            def __init__(self, *args: Any, **inner: Any) -> None:
                super().__init__(*args, request=request, **inner)

        return RequestForm

    def get_fields(self, request: HttpRequest, obj: Model | None = None) -> _FieldGroups:
        return ("user", "expires_days") if obj is None else self.readonly_fields

    def get_readonly_fields(self, request: HttpRequest, obj: Model | None = None) -> _ListOrTuple[str]:
        return self.readonly_fields if obj else ()

    def save_model(
        self, request: HttpRequest, obj: AdminToken, form: forms.ModelForm[AdminToken], change: bool
    ) -> None:
        plaintext = services.admin_token_create(
            user=form.cleaned_data["user"], actor=request.user, expires_days=form.cleaned_data.get("expires_days")
        )
        token = AdminToken.objects.get(token_hash=ApiKey.hash(plaintext))
        obj.pk, obj._state.adding = token.pk, False
        # Messages live in the session (settings.MESSAGE_STORAGE), never in a cookie.
        self.message_user(request, f"Admin token (shown once, copy it now): {plaintext}", messages.WARNING)

    @admin.action(description=gettext_lazy("Revoke selected admin tokens"), permissions=["revoke"])
    def revoke_tokens(self, request: HttpRequest, queryset: QuerySet[AdminToken]) -> None:
        for token in queryset:
            services.admin_token_revoke(token=token, actor=request.user)
        self.message_user(request, f"{queryset.count()} token(s) revoked.", messages.SUCCESS)

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False
