"""Django admin for groups and group rules, and the access answers shown on the model and member
pages. Every write goes through allocations.groups / allocations.group_rules (audited)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.widgets import FilteredSelectMultiple
from django.db import transaction
from django.db.models import Count, Model, QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from allocations import group_rules, groups
from allocations.exceptions import GatewayError
from allocations.model_access import member_access, member_groups_of, model_members_allowed
from allocations.models import CatalogModel, Group, GroupRule, Member
from quota.group_budgets import spend_of, with_spend

from . import marks
from .base import StaffAdmin, form_errors_from

if TYPE_CHECKING:
    from django.contrib.admin.options import _FieldGroups

BUDGET_HELP = (
    "The group's monthly budget: every call of its members counts toward it; at the cap their calls are "
    "refused (group_cost_quota_exceeded / group_quota_exceeded). Blank: no cap."
)


class GroupForm(forms.ModelForm):
    members = forms.ModelMultipleChoiceField(
        queryset=Member.objects.order_by("username"),
        required=False,
        widget=FilteredSelectMultiple("members", is_stacked=False),
    )

    class Meta:
        model = Group
        fields = ("name", "slug", "quota_cost_usd_per_month", "quota_tokens_per_month")
        help_texts = {"quota_cost_usd_per_month": BUDGET_HELP, "quota_tokens_per_month": BUDGET_HELP}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial["members"] = list(self.instance.members.values_list("pk", flat=True))


@admin.register(Group)
class GroupAdmin(StaffAdmin):
    form = GroupForm
    list_display = ("name", "slug", "member_count", "spend", "tokens")
    search_fields = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}
    readonly_fields = ("spend", "tokens")

    def get_fields(self, request: HttpRequest, obj: Model | None = None) -> _FieldGroups:
        fields = list(super().get_fields(request, obj))
        return fields if obj is not None else [f for f in fields if f not in self.readonly_fields]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Group]:
        """Each group with its member count and this period's counter (no query per row)."""
        return with_spend(super().get_queryset(request).annotate(n_members=Count("members")))

    @admin.display(description=_("members"), ordering="n_members")
    def member_count(self, obj: Group) -> int:
        return obj.n_members  # type: ignore[attr-defined]  # annotated by get_queryset

    @admin.display(description=_("spend this month / budget"))
    def spend(self, obj: Group) -> str:
        used, cap = spend_of(obj).cost_used, obj.quota_cost_usd_per_month
        return marks.figure(
            marks.money(used), marks.money(cap) if cap is not None else gettext("no cap"), marks.share(used, cap),
            marks.one_cap_state(used, cap),
        )  # fmt: skip

    @admin.display(description=_("tokens this month / quota"))
    def tokens(self, obj: Group) -> str:
        used, cap = spend_of(obj).tokens_used, obj.quota_tokens_per_month
        state = marks.cap_state(tokens_used=used, token_cap=cap, cost_used=Decimal(0), cost_cap=None)
        cap_text = f"{cap:,}" if cap is not None else gettext("no cap")
        return marks.figure(f"{used:,}", cap_text, marks.share(used, cap), state)

    def save_model(self, request: HttpRequest, obj: Group, form: forms.ModelForm[Group], change: bool) -> None:
        data = {f: form.cleaned_data.get(f) for f in groups.GROUP_FIELDS}
        try:
            with transaction.atomic():
                if change:
                    group = groups.group_update(
                        group=Group.objects.get(pk=obj.pk),
                        changes={f: data[f] for f in form.changed_data if f in data},
                        actor=request.user,
                    )
                else:
                    group = groups.group_create(data=data, actor=request.user)
                self._members(request, group, form)
        except GatewayError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return
        obj.pk, obj._state.adding = group.pk, False

    @staticmethod
    def _members(request: HttpRequest, group: Group, form: forms.ModelForm[Group]) -> None:
        chosen = {m.pk: m.username for m in form.cleaned_data.get("members") or ()}
        current = dict(group.members.values_list("pk", "username"))
        add = [name for pk, name in chosen.items() if pk not in current]
        remove = [name for pk, name in current.items() if pk not in chosen]
        if add or remove:
            groups.group_members_change(group=group, add=add, remove=remove, actor=request.user)

    def save_related(
        self, request: HttpRequest, form: forms.ModelForm[Group], formsets: list[forms.BaseInlineFormSet], change: bool
    ) -> None:
        """Members are saved by save_model, through the service (audited)."""


class GroupRuleForm(forms.ModelForm):
    class Meta:
        model = GroupRule
        fields = ("order", "matcher", "pattern", "group", "enabled")
        help_texts = {
            "pattern": "A domain (email_domain), an ending (email_suffix) or an anchored regular expression "
            "(…_regex: no nested quantifiers, no ambiguous alternation under a repeat, at most 200 characters)."
        }

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        assert data is not None  # Django's clean() returns cleaned_data
        if data.get("matcher"):
            try:
                data["pattern"] = group_rules.rule_pattern_clean(matcher=data["matcher"], pattern=data.get("pattern"))
            except GatewayError as exc:
                form_errors_from(exc, self, default_field="pattern")
        return data


@admin.register(GroupRule)
class GroupRuleAdmin(StaffAdmin):
    form = GroupRuleForm
    list_display = ("order", "matcher", "pattern", "group", "enabled")
    list_filter = ("matcher", "enabled")
    list_select_related = ("group",)
    ordering = ("order", "created_at")

    def save_model(self, request: HttpRequest, obj: GroupRule, form: forms.ModelForm[GroupRule], change: bool) -> None:
        data = {f: form.cleaned_data[f] for f in group_rules.RULE_FIELDS}
        if change:
            rule = group_rules.group_rule_update(
                rule=GroupRule.objects.get(pk=obj.pk), changes=data, actor=request.user
            )
        else:
            rule = group_rules.group_rule_create(data=data, actor=request.user)
        obj.pk, obj._state.adding = rule.pk, False


def access_lines(reasons: Iterable[str]) -> str:
    return format_html_join("", "<li>{}</li>", ((r,) for r in reasons))


def model_access_display(model: CatalogModel) -> str:
    """Who may use the model (the same answer as GET /api/admin/models/{id}/access)."""
    members = model_members_allowed(model=model)
    names = ", ".join(m.username for m in members[:200]) or "nobody"
    more = f" (and {len(members) - 200} more)" if len(members) > 200 else ""
    return format_html("{} member(s) may use it: {}{}", len(members), names, more)


def member_access_display(member: Member) -> str:
    """For each active model: may this member use it, and why (GET /api/admin/members/{id}/access)."""
    member_groups = member_groups_of(member.pk)
    rows = []
    for model in CatalogModel.objects.filter(is_active=True).order_by("slug"):
        decision = member_access(member=member, model=model, member_groups=member_groups)
        verdict = "may use" if decision.allowed else "may not use"
        rows.append(
            format_html("<li><b>{}</b> {}: <ul>{}</ul></li>", verdict, model.slug, access_lines(decision.reasons))
        )
    return format_html("<ul>{}</ul>", format_html_join("", "{}", ((r,) for r in rows))) if rows else "—"


def member_groups_display(member: Member) -> str:
    return ", ".join(sorted(member_groups_of(member.pk).values())) or "—"


def add_to_group_action(group: Group) -> tuple[Callable[..., None], str, str]:
    """A Member list action that adds the selected members to `group` (one per group)."""

    def action(model_admin: admin.ModelAdmin[Any], request: HttpRequest, queryset: QuerySet[Any]) -> None:
        try:
            groups.group_members_change(
                group=group, add=list(queryset.values_list("username", flat=True)), actor=request.user
            )
        except GatewayError as exc:
            model_admin.message_user(request, exc.message, messages.ERROR)
            return
        model_admin.message_user(request, f"Added {queryset.count()} member(s) to {group.name}.", messages.SUCCESS)

    return action, f"add_to_group_{group.pk.hex}", f"Add selected members to group: {group.name}"
