"""Every catalogue model's provider and upstream name become its first deployment. Backwards: the
first deployment (priority, then age) is written back into the model, then the rows go."""

from django.db import migrations


def forward(apps, schema_editor):
    CatalogModel = apps.get_model("allocations", "CatalogModel")
    Deployment = apps.get_model("allocations", "Deployment")
    served = set(Deployment.objects.values_list("model_id", flat=True))
    Deployment.objects.bulk_create(
        Deployment(model_id=m.pk, provider_id=m.provider_id, upstream_name=m.upstream_name)
        for m in CatalogModel.objects.exclude(pk__in=served).only("pk", "provider_id", "upstream_name")
    )


def backward(apps, schema_editor):
    CatalogModel = apps.get_model("allocations", "CatalogModel")
    Deployment = apps.get_model("allocations", "Deployment")
    for model in CatalogModel.objects.all():
        first = Deployment.objects.filter(model_id=model.pk).order_by("priority", "created_at", "id").first()
        if first is not None and (first.provider_id, first.upstream_name) != (model.provider_id, model.upstream_name):
            model.provider_id, model.upstream_name = first.provider_id, first.upstream_name
            model.save(update_fields=["provider", "upstream_name"])
    Deployment.objects.all().delete()


class Migration(migrations.Migration):
    dependencies = [("allocations", "0011_deployment_table")]

    operations = [migrations.RunPython(forward, backward)]
