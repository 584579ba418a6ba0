"""The migration that adds the tool rules drops `local_shell` from the models that allowed it: the
client runs that tool, so it is no longer an option a model allows (it always passes). On a
database of its own (tests/scratch_db.py)."""

from django.db import connection
from django.db.migrations.executor import MigrationExecutor


def test_local_shell_leaves_the_allowed_options_and_the_rules_default_to_remove(scratch_executor):
    executor = scratch_executor
    [target] = [key for key in executor.loader.graph.nodes if key[1].endswith("catalogmodel_tools_by_who_runs_them")]
    [before] = executor.loader.graph.node_map[target].parents
    executor.migrate([before.key])
    migrated(executor, before.key, target)


def migrated(executor: MigrationExecutor, before: tuple, target: tuple) -> None:
    old = executor.loader.project_state([before]).apps
    provider = old.get_model("allocations", "Provider").objects.create(name="p", kind="simulated", base_url="")
    models = old.get_model("allocations", "CatalogModel").objects
    shelled = models.create(slug="a", provider=provider, upstream_name="a", kind="chat",
                            allowed_options=["local_shell", "web_search"])  # fmt: skip
    plain = models.create(slug="b", provider=provider, upstream_name="b", kind="chat", allowed_options=["mcp"])
    executor = MigrationExecutor(connection)
    executor.migrate([target])
    executor.loader.build_graph()
    new = executor.loader.project_state([target]).apps.get_model("allocations", "CatalogModel").objects
    assert new.get(pk=shelled.pk).allowed_options == ["web_search"]
    assert new.get(pk=plain.pk).allowed_options == ["mcp"]
    assert {m.unpriced_tools for m in new.all()} == {"remove"} and all(m.extra_client_tools == [] for m in new.all())
