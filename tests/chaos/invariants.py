"""What must hold after a fault run, checked from three independent sources: the upstream's own
ledger of calls (by request id), what each client saw, and the gateway's records and counters."""

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

from django.db.models import Sum

from quota.group_budgets import group_usage_reconcile
from quota.models import CallRecord, GroupUsageCounter, Reservation, UsageCounter
from quota.rollups import hourly_drift, record_days, record_hours, rollup_drift
from quota.services import usage_reconcile

from .load import Seen

# The gateway completes a non-streaming call whose client left and bills it (SPEC 4), so the
# upstream's usage is the billed usage for those too; an abandoned stream is cut upstream.
BILLED_AS_SERVED = {"plain", "abandoned_plain", "capped", "stream"}


@dataclass
class Report:
    figures: dict = field(default_factory=dict)
    violations: dict[str, list] = field(default_factory=lambda: defaultdict(list))

    def violate(self, invariant: str, detail) -> None:
        self.violations[invariant].append(detail)

    @property
    def summary(self) -> dict:
        return {name: {"count": len(items), "first": items[:5]} for name, items in self.violations.items() if items}


def check(*, upstream_calls: list[dict], seen: list[Seen], capped_allocation, cap: Decimal, shared=None) -> Report:
    """`shared`: (upstream name, deployment ids) of a model on two deployments, the deployment
    behind each of the rig's upstreams in their order; a request may then reach both upstreams,
    once per attempt its record counts."""
    report = Report()
    records = list(
        CallRecord.objects.filter(request_id__startswith="chaos-").values(
            "request_id",
            "outcome",
            "error_code",
            "input_tokens",
            "output_tokens",
            "estimated",
            "status_code",
            "attempts",
            "deployment_id",
        )
    )
    by_rid = defaultdict(list)
    for row in records:
        by_rid[row["request_id"]].append(row)
    clients = {s.rid: s for s in seen}
    _one_record_per_upstream_call(report, upstream_calls, by_rid, failover=shared is not None)
    if shared is not None:
        _served_by_recorded_deployment(report, upstream_calls, by_rid, *shared)
    _billed_equals_served(report, upstream_calls, by_rid, clients)
    _no_extra_billing(report, {c["rid"] for c in upstream_calls}, by_rid)
    _client_answers(report, seen)
    _books(report, capped_allocation, cap)
    report.figures.update(
        upstream_calls=len(upstream_calls),
        records=len(records),
        records_by_outcome=dict(Counter(r["outcome"] for r in records)),
        worker_lost=sum(r["error_code"] == "worker_lost" for r in records),
        upstream_by_model=dict(Counter(c["model"] for c in upstream_calls)),
    )
    return report


def _one_record_per_upstream_call(report: Report, upstream_calls: list[dict], by_rid, *, failover: bool) -> None:
    """Without failover a request reaches the upstream once; with it, once per attempt its record
    counts (a deployment that failed, then the next), and only one upstream answers it whole."""
    per_model = defaultdict(lambda: [0, 0])  # upstream model -> [requests upstream, their records]
    for call in upstream_calls:
        rows = by_rid.get(call["rid"], ())
        per_model[call["model"]][0] += 1 if failover else call["n"]
        per_model[call["model"]][1] += len(rows)
        allowed = max([1] + [row["attempts"] for row in rows]) if failover else 1
        if call["n"] > allowed or len(call.get("served_by", ())) > 1:
            report.violate("upstream called more than once for one request", call)
        if not rows:
            report.violate("lost record", call)
    for rid, rows in by_rid.items():
        if len(rows) > 1:
            report.violate("extra record", {"rid": rid, "records": rows})
    report.figures["per_upstream_model"] = {m: {"upstream": u, "records": r} for m, (u, r) in per_model.items()}
    for model, (calls, recorded) in per_model.items():
        if calls != recorded:
            report.violate("records per upstream model", {"model": model, "upstream": calls, "records": recorded})


def _served_by_recorded_deployment(report: Report, upstream_calls: list[dict], by_rid, name: str, ids) -> None:
    """A call of the shared model answered by an upstream names that upstream's deployment."""
    moved = 0
    for call in upstream_calls:
        rows = by_rid.get(call["rid"], ())
        if call["model"] != name or len(call["served_by"]) != 1 or len(rows) != 1:
            continue
        if rows[0]["error_code"] == "worker_lost":
            continue  # billed by the sweep from the admission: no attempt recorded
        if str(rows[0]["deployment_id"]) != ids[call["served_by"][0]]:
            report.violate("record names another deployment than the one that served", {**call, "record": rows[0]})
        moved += rows[0]["attempts"] > 1
    report.figures["served_after_failover"] = moved


def _billed_equals_served(report: Report, upstream_calls: list[dict], by_rid, clients: dict) -> None:
    compared = 0
    for call in upstream_calls:
        rows, client = by_rid.get(call["rid"], []), clients.get(call["rid"])
        if call["served"] is None or len(rows) != 1 or client is None or client.kind not in BILLED_AS_SERVED:
            continue
        row = rows[0]
        if row["error_code"] == "worker_lost":
            continue  # its process died holding the answer: billed at the estimate, by design
        if client.kind == "stream" and client.tokens is None:
            continue  # the stream did not reach its client whole (its gateway was stopped under it)
        compared += 1
        billed = row["input_tokens"] + row["output_tokens"]
        if billed != call["served"] or row["estimated"]:
            report.violate("billed != served", {"rid": call["rid"], "served": call["served"], "record": row})
        if client.tokens is not None and client.tokens != call["served"]:
            report.violate(
                "client saw other usage", {"rid": call["rid"], "served": call["served"], "seen": client.tokens}
            )
    report.figures["token_comparisons"] = compared


def _no_extra_billing(report: Report, reached_upstream: set, by_rid) -> None:
    """A call that never reached the upstream carries no usage, unless its process died holding its
    reservation (billed at the estimate: the gateway cannot know how far the call got)."""
    for rid, rows in by_rid.items():
        for row in rows:
            billed = row["input_tokens"] + row["output_tokens"]
            if rid not in reached_upstream and billed and row["error_code"] != "worker_lost":
                report.violate("usage billed without an upstream call", row)


def _client_answers(report: Report, seen: list[Seen]) -> None:
    for s in seen:
        if s.status == 500 or (s.status is not None and s.status >= 500 and s.status not in (502, 503, 504)):
            report.violate("5xx from the gateway", s)
        # A client that left after the head (abandoned_plain) saw the status and headers only.
        unavailable = s.error_code == "gateway_unavailable" or not s.read_whole
        if s.status == 503 and (not unavailable or not s.retry_after):
            report.violate("503 without gateway_unavailable + Retry-After", s)


def _books(report: Report, capped_allocation, cap: Decimal) -> None:
    days = record_days()
    if days is not None:  # the daily rollups are the records' sums, whatever the faults
        for key, sides in rollup_drift(first_day=days[0], last_day=days[1]).items():
            report.violate("rollups != records", {"key": key, "records, rollups": sides})
    hours = record_hours()
    if hours is not None:  # and so are the hourly ones
        for key, sides in hourly_drift(start=hours[0], end=hours[1]).items():
            report.violate("hourly rollups != records", {"key": key, "records, rollups": sides})
    drifts = usage_reconcile()  # against the rollups, just checked against the records
    for drift in drifts:
        report.violate("counters != records", drift)
    left = Reservation.objects.count()
    if left:
        report.violate("reservations left after the sweep", left)
    held = UsageCounter.objects.aggregate(tokens=Sum("tokens_reserved"), cost=Sum("cost_reserved"))
    if held["tokens"] or held["cost"]:
        report.violate("counters still hold reservations", held)
    for drift in group_usage_reconcile():
        report.violate("group counters != records", drift)
    group_held = GroupUsageCounter.objects.aggregate(tokens=Sum("tokens_reserved"), cost=Sum("cost_reserved"))
    if group_held["tokens"] or group_held["cost"]:
        report.violate("group counters still hold reservations", group_held)
    group = GroupUsageCounter.objects.aggregate(cost=Sum("cost_used"), tokens=Sum("tokens_used"), calls=Sum("calls"))
    report.figures["group"] = {k: str(v) for k, v in group.items()}
    member = UsageCounter.objects.aggregate(cost=Sum("cost_used"), tokens=Sum("tokens_used"), calls=Sum("calls"))
    if group != member:  # the one member is the one group's only member: every call counts in both
        report.violate("group counter != its member's counters", {"group": group, "member": member})
    counter = UsageCounter.objects.filter(allocation=capped_allocation).first()
    used = counter.cost_used if counter else Decimal(0)
    biggest = max(
        CallRecord.objects.filter(allocation=capped_allocation, cost_usd__isnull=False).values_list(
            "cost_usd", flat=True
        ),
        default=Decimal(0),
    )
    report.figures["cap"] = {"cap": str(cap), "used": str(used), "largest_call": str(biggest)}
    if used > cap + biggest:
        report.violate("cap overshoot above one call", report.figures["cap"])
