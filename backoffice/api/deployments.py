"""Admin API: a catalogue model's deployments and a provider's connection test (SPEC 8). The rules
(ranges, the first deployment mirrored on the model, at least one kept) live in
allocations.deployments; the test in allocations.provider_check."""

from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.response import Response

from allocations import deployments as services
from allocations.models import CatalogModel, Deployment, Provider
from allocations.provider_check import provider_test
from allocations.requests import MemberAPIRequest
from lib.serializers import (
    StrictBooleanField,
    StrictCharField,
    StrictInputSerializer,
    WholeNumberInputField,
    parse_input,
)

from . import selectors as sel
from .base import AdminAPIView, provider_by
from .serializers import DeploymentOutput, ProviderTestOutput


class DeploymentInput(StrictInputSerializer):
    provider = StrictCharField(max_length=100, help_text="The provider's name or id.")
    upstream_name = StrictCharField(max_length=200, help_text="The model (or Azure deployment) name upstream.")
    weight = WholeNumberInputField(required=False, help_text="Share of the calls within its priority; 0 = backup.")
    priority = WholeNumberInputField(required=False, help_text="Lower first (default 0).")
    rpm_limit = WholeNumberInputField(required=False, allow_null=True, help_text="Requests per minute.")
    tpm_limit = WholeNumberInputField(required=False, allow_null=True, help_text="Tokens per minute.")
    active = StrictBooleanField(required=False)


class DeploymentChanges(DeploymentInput):
    provider = StrictCharField(max_length=100, required=False, help_text="The provider's name or id.")
    upstream_name = StrictCharField(max_length=200, required=False)


def _with_provider(data: dict) -> dict:
    return {**data, "provider": provider_by(data["provider"])} if "provider" in data else data


def _deployment_or_404(model_id: str, deployment_id: str) -> Deployment:
    model = sel.get_or_404(CatalogModel.objects.all(), model_id)
    deployment = sel.get_or_404(Deployment.objects.select_related("provider", "model"), deployment_id)
    if deployment.model_id != model.pk:
        raise Http404
    return deployment


class DeploymentList(AdminAPIView):
    @extend_schema(responses=DeploymentOutput(many=True))
    def get(self, request: MemberAPIRequest, model_id: str) -> Response:
        model = sel.get_or_404(CatalogModel.objects.all(), model_id)
        rows = Deployment.objects.filter(model=model).in_order().select_related("provider")
        return Response({"results": DeploymentOutput(rows, many=True).data})

    @extend_schema(request=DeploymentInput, responses={201: DeploymentOutput})
    def post(self, request: MemberAPIRequest, model_id: str) -> Response:
        model = sel.get_or_404(CatalogModel.objects.all(), model_id)
        data = _with_provider(parse_input(DeploymentInput, request))
        deployment = services.deployment_create(model=model, actor=request.user, **data)
        return Response(DeploymentOutput(deployment).data, status=status.HTTP_201_CREATED)


class DeploymentDetail(AdminAPIView):
    @extend_schema(responses=DeploymentOutput)
    def get(self, request: MemberAPIRequest, model_id: str, deployment_id: str) -> Response:
        return Response(DeploymentOutput(_deployment_or_404(model_id, deployment_id)).data)

    @extend_schema(request=DeploymentChanges, responses=DeploymentOutput)
    def patch(self, request: MemberAPIRequest, model_id: str, deployment_id: str) -> Response:
        deployment = _deployment_or_404(model_id, deployment_id)
        changes = _with_provider(parse_input(DeploymentChanges, request))
        deployment = services.deployment_update(deployment=deployment, changes=changes, actor=request.user)
        return Response(DeploymentOutput(deployment).data)

    @extend_schema(responses={204: None})
    def delete(self, request: MemberAPIRequest, model_id: str, deployment_id: str) -> Response:
        services.deployment_delete(deployment=_deployment_or_404(model_id, deployment_id), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ProviderTest(AdminAPIView):
    class InputSerializer(StrictInputSerializer):
        billable = StrictBooleanField(
            required=False, default=False, help_text="true: a one-token chat call (billed by the provider)."
        )
        model = StrictCharField(
            required=False, allow_blank=True, max_length=200, default="",
            help_text="The upstream name a billable test calls (default: the provider's first deployment's).",
        )  # fmt: skip

    @extend_schema(request=InputSerializer, responses=ProviderTestOutput)
    def post(self, request: MemberAPIRequest, provider_id: str) -> Response:
        provider = sel.get_or_404(Provider.objects.all(), provider_id)
        data = parse_input(self.InputSerializer, request)
        result = provider_test(
            provider=provider, billable=data["billable"], upstream_name=data["model"], actor=request.user
        )
        return Response(ProviderTestOutput(result).data)
