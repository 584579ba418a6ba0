"""Groups of members (departments, teams) and the rules that place new members in them."""

import uuid

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _


class Group(models.Model):
    """A set of members governed together: model access (CatalogModel.allowed_groups and
    denied_groups) and, later, a monthly budget. The two caps are stored and shown; nothing
    enforces them yet."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False, verbose_name=_("ID"))
    name = models.CharField(max_length=100, unique=True, verbose_name=_("name"))
    slug = models.SlugField(max_length=100, unique=True, verbose_name=_("slug"))
    quota_cost_usd_per_month = models.DecimalField(
        max_digits=20, decimal_places=9, null=True, blank=True, verbose_name=_("cost cap (USD per month)")
    )
    quota_tokens_per_month = models.BigIntegerField(null=True, blank=True, verbose_name=_("token quota per month"))
    # Not `groups`: Django's auth.Group already holds that name on the member.
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, related_name="org_groups", blank=True, verbose_name=_("members")
    )
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created at"))
    updated_at = models.DateTimeField(auto_now=True, verbose_name=_("updated at"))

    class Meta:
        verbose_name = _("group")
        verbose_name_plural = _("groups")
        constraints = [
            models.CheckConstraint(
                condition=models.Q(quota_tokens_per_month__isnull=True) | models.Q(quota_tokens_per_month__gte=0),
                name="group_token_quota_non_negative",
            ),
            models.CheckConstraint(
                condition=models.Q(quota_cost_usd_per_month__isnull=True) | models.Q(quota_cost_usd_per_month__gte=0),
                name="group_cost_cap_non_negative",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class GroupRule(models.Model):
    """Places a new member in `group` when `matcher` matches (first enabled rule by `order`)."""

    class Matcher(models.TextChoices):
        EMAIL_DOMAIN = "email_domain"
        EMAIL_SUFFIX = "email_suffix"
        EMAIL_LOCALPART_REGEX = "email_localpart_regex"
        USERNAME_REGEX = "username_regex"
        ALWAYS = "always"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False, verbose_name=_("ID"))
    order = models.IntegerField(default=0, verbose_name=_("order"))
    matcher = models.CharField(max_length=24, choices=Matcher.choices, verbose_name=_("matcher"))
    pattern = models.CharField(max_length=200, blank=True, verbose_name=_("pattern"))
    group = models.ForeignKey(Group, on_delete=models.CASCADE, related_name="rules", verbose_name=_("group"))
    enabled = models.BooleanField(default=True, verbose_name=_("enabled"))
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created at"))
    updated_at = models.DateTimeField(auto_now=True, verbose_name=_("updated at"))

    class Meta:
        verbose_name = _("group rule")
        verbose_name_plural = _("group rules")
        ordering = ["order", "created_at"]

    def __str__(self) -> str:
        return f"{self.order}: {self.matcher} {self.pattern!r} -> {self.group}"
