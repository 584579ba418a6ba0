"""Group rules (SPEC 10): the first enabled rule, by `order`, that matches a new member places it in
its group. Evaluated when a member is created (allocations.members.member_create, hence the admin
API and pages, single sign-on's first sign-in and commands) and by whoever else creates members,
through `group_rules_apply`. A rule that fails while evaluated is skipped, logged and audited: it
never blocks a sign-up.
"""

import logging
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from lib.cache import bump_auth_generation
from lib.regex_guard import UnsafePattern, regex_check

from .audit import Actor, audit_record
from .changes import check_known_fields
from .exceptions import BadRequest
from .models import Group, GroupRule, Member

logger = logging.getLogger(__name__)
M = GroupRule.Matcher
REGEX_MATCHERS = (M.EMAIL_LOCALPART_REGEX, M.USERNAME_REGEX)
RULE_FIELDS = ("order", "matcher", "pattern", "group", "enabled")


def rule_pattern_clean(*, matcher: str, pattern: Any) -> str:
    """The pattern as stored, or a field error: regexes pass the guard (lib.regex_guard),
    domains and suffixes are case-folded, `always` takes none."""
    if matcher not in M.values:
        raise BadRequest("unknown matcher", fields={"matcher": [f"One of: {', '.join(M.values)}."]})
    pattern = pattern if isinstance(pattern, str) else ""
    if matcher == M.ALWAYS:
        return ""
    if matcher in REGEX_MATCHERS:
        try:
            regex_check(pattern)
        except UnsafePattern as error:
            raise BadRequest(f"pattern refused: {error}", fields={"pattern": [str(error)]}) from None
        return pattern
    pattern = pattern.strip().casefold().lstrip("@" if matcher == M.EMAIL_DOMAIN else "")
    if not pattern or len(pattern) > 200:
        raise BadRequest("a pattern is required", fields={"pattern": ["1 to 200 characters."]})
    return pattern


def rule_matches(rule: GroupRule, *, email: str, username: str) -> bool:
    """Whether `rule` matches; raises whatever a broken rule raises (the callers decide)."""
    email, username = (email or "").casefold(), (username or "").casefold()
    local, _, domain = email.rpartition("@")
    if rule.matcher == M.ALWAYS:
        return True
    if rule.matcher == M.EMAIL_DOMAIN:
        return bool(local) and domain == rule.pattern
    if rule.matcher == M.EMAIL_SUFFIX:
        return bool(email) and email.endswith(rule.pattern)
    if rule.matcher == M.EMAIL_LOCALPART_REGEX:
        return bool(local) and regex_check(rule.pattern).fullmatch(local) is not None
    if rule.matcher == M.USERNAME_REGEX:
        return regex_check(rule.pattern).fullmatch(username) is not None
    raise ValueError(f"unknown matcher {rule.matcher!r}")


@dataclass(frozen=True)
class RuleMatch:
    rule: GroupRule | None
    failed: tuple[tuple[GroupRule, str], ...]  # rules skipped because they failed, with the error


def group_rules_match(*, email: str = "", username: str = "") -> RuleMatch:
    """The first enabled rule (by order) that matches, without writing anything (the dry run)."""
    failed: list[tuple[GroupRule, str]] = []
    for rule in GroupRule.objects.filter(enabled=True).select_related("group").order_by("order", "created_at"):
        try:
            if rule_matches(rule, email=email, username=username):
                return RuleMatch(rule, tuple(failed))
        except Exception as error:  # noqa: BLE001 - a broken rule must never block a sign-up
            failed.append((rule, f"{type(error).__name__}: {error}"))
    return RuleMatch(None, tuple(failed))


def group_rules_apply(*, member: Member, actor: Actor = None) -> Group | None:
    """Places a newly created member in the group of the first matching rule; returns that group.
    Never raises: a rule that fails is skipped, logged and audited as `group_rule_failed`."""
    try:
        with transaction.atomic():  # a savepoint: a database error here leaves the caller's transaction usable
            found = group_rules_match(email=member.email, username=member.username)
    except Exception:  # the rules could not even be read: the sign-up goes on without a group
        logger.exception("group rules could not be evaluated for member %s", member.pk)
        return None
    for rule, error in found.failed:
        logger.warning("group rule %s failed for member %s: %s", rule.pk, member.pk, error)
        audit_record(
            actor=actor, action="group_rule_failed", target=rule, after={"member": member.username, "error": error}
        )
    if found.rule is None:
        return None
    group = found.rule.group
    with transaction.atomic():
        group.members.add(member)
        audit_record(
            actor=actor,
            action="group_member_added",
            target=group,
            after={"member": member.username, "member_id": str(member.pk), "rule": str(found.rule.pk)},
        )
        bump_auth_generation()
    return group


def _rule_snapshot(rule: GroupRule) -> dict:
    return {
        "order": rule.order,
        "matcher": rule.matcher,
        "pattern": rule.pattern,
        "group": rule.group.slug,
        "enabled": rule.enabled,
    }


def _rule_values(data: dict, *, current: GroupRule | None = None) -> dict:
    check_known_fields(data, RULE_FIELDS)
    values = dict(data)
    if "order" in values and (isinstance(values["order"], bool) or not isinstance(values["order"], int)):
        raise BadRequest("order must be a whole number", fields={"order": ["A whole number."]})
    if "enabled" in values and not isinstance(values["enabled"], bool):
        raise BadRequest("enabled must be true or false", fields={"enabled": ["Must be a boolean."]})
    if "group" in values and not isinstance(values["group"], Group):
        raise BadRequest("no such group", fields={"group": ["No group with that id or slug."]})
    if {"matcher", "pattern"} & set(values) or current is None:
        matcher = values.get("matcher", current.matcher if current else None)
        pattern = values.get("pattern", current.pattern if current else "")
        values["matcher"] = matcher
        values["pattern"] = rule_pattern_clean(matcher=str(matcher or ""), pattern=pattern)
    return values


def group_rule_create(*, data: dict, actor: Actor = None) -> GroupRule:
    if "group" not in data:
        raise BadRequest("group is required", fields={"group": ["This field is required."]})
    values = _rule_values(data)
    with transaction.atomic():
        rule = GroupRule.objects.create(**values)
        audit_record(actor=actor, action="group_rule_created", target=rule, after=_rule_snapshot(rule))
    return rule


def group_rule_update(*, rule: GroupRule, changes: dict, actor: Actor = None) -> GroupRule:
    values = _rule_values(changes, current=rule)
    before = _rule_snapshot(rule)
    for field, value in values.items():
        setattr(rule, field, value)
    after = _rule_snapshot(rule)
    if after == before:
        return rule
    with transaction.atomic():
        rule.save()
        audit_record(actor=actor, action="group_rule_updated", target=rule, before=before, after=after)
    return rule


def group_rule_delete(*, rule: GroupRule, actor: Actor = None) -> None:
    with transaction.atomic():
        audit_record(actor=actor, action="group_rule_deleted", target=rule, before=_rule_snapshot(rule))
        rule.delete()
