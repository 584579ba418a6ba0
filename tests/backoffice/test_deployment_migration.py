"""The migration that gives every catalogue model its first deployment, forward and back, on a
table that already holds models (on a database of its own: tests/scratch_db.py)."""

from django.db import connection
from django.db.migrations.executor import MigrationExecutor


def test_each_model_gets_its_provider_as_first_deployment_and_back(scratch_executor):
    executor = scratch_executor
    [target] = [key for key in executor.loader.graph.nodes if key[1].endswith("deployment_from_model_provider")]
    [table] = executor.loader.graph.node_map[target].parents
    [before] = executor.loader.graph.node_map[table.key].parents
    executor.migrate([before.key])
    migrated_both_ways(before.key, target)


def migrated_both_ways(before: tuple, target: tuple) -> None:
    old = MigrationExecutor(connection).loader.project_state([before]).apps
    providers = old.get_model("allocations", "Provider").objects
    east = providers.create(name="east", kind="simulated", base_url="")
    west = providers.create(name="west", kind="simulated", base_url="")
    models = old.get_model("allocations", "CatalogModel").objects
    a = models.create(slug="a", provider=east, upstream_name="a-up", kind="chat")
    b = models.create(slug="b", provider=west, upstream_name="b-up", kind="embedding")

    executor = MigrationExecutor(connection)
    executor.migrate([target])
    new = MigrationExecutor(connection).loader.project_state([target]).apps
    rows = new.get_model("allocations", "Deployment").objects
    assert sorted(
        rows.values_list("model_id", "provider_id", "upstream_name", "weight", "priority", "active")
    ) == sorted([(a.pk, east.pk, "a-up", 1, 0, True), (b.pk, west.pk, "b-up", 1, 0, True)])
    # An admin then moved model a to west as its first deployment: going back keeps that.
    rows.filter(model_id=a.pk).update(provider_id=west.pk, upstream_name="a-west")

    executor = MigrationExecutor(connection)
    executor.migrate([before])
    back = MigrationExecutor(connection).loader.project_state([before]).apps.get_model("allocations", "CatalogModel")
    assert (back.objects.get(pk=a.pk).provider_id, back.objects.get(pk=a.pk).upstream_name) == (west.pk, "a-west")
    assert back.objects.get(pk=b.pk).upstream_name == "b-up"
    with connection.cursor() as cursor:
        assert "allocations_deployment" not in connection.introspection.table_names(cursor)
