"""Builds the daily rollups of the call records still held, now keyed by the calls' API key and groups too
(later records are rolled up as they are written): every day that has records is recomputed, as
`manage.py rebuild_rollups` does. The rollups of months already pruned stay as they were, with no
groups (their records are gone), so a group report over such a month finds nothing. Backwards:
the rows of one former key with different API keys or groups are folded into its row without
them, so the key before 0015 holds again."""

from django.db import migrations


def build(apps, schema_editor):
    # The live module's SQL (it reads only the tables this migration knows).
    from quota.rollups import record_days, rollups_rebuild

    days = record_days()
    if days is not None:
        rollups_rebuild(first_day=days[0], last_day=days[1])


SUMS = (
    "calls, input_tokens, output_tokens, cached_tokens, reasoning_tokens, audio_input_tokens,"
    " audio_output_tokens, quantity, cost_usd, priced_calls, unpriced_calls"
).split(", ")
FOLD = (
    "WITH gone AS (DELETE FROM quota_dailyrollup WHERE group_ids <> '{}' OR api_key_id IS NOT NULL RETURNING *)"
    " INSERT INTO quota_dailyrollup AS d (day, allocation_id, member_id, model_id, outcome, group_ids, "
    + ", ".join(SUMS)
    + ") SELECT day, allocation_id, member_id, model_id, outcome, '{}', "
    + ", ".join(f"sum({c})" for c in SUMS)
    + " FROM gone GROUP BY 1, 2, 3, 4, 5 ON CONFLICT ON CONSTRAINT daily_rollup_once_per_key DO UPDATE SET "
    + ", ".join(f"{c} = d.{c} + EXCLUDED.{c}" for c in SUMS)
)


def fold(apps, schema_editor):
    schema_editor.execute(FOLD)


class Migration(migrations.Migration):
    dependencies = [("quota", "0015_daily_rollup_key_and_groups")]

    operations = [migrations.RunPython(build, fold)]
