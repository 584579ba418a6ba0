from django.urls import path

from . import api, device, selfservice

urlpatterns = [
    path("allocations", selfservice.AllocationListAndClaim.as_view(), name="me-allocations"),
    path("claimable-models", selfservice.ClaimableModels.as_view(), name="me-claimable-models"),
    path("allocations/<str:allocation_id>", api.AllocationDetail.as_view(), name="me-allocation"),
    path("allocations/<str:allocation_id>/pause", api.AllocationPause.as_view(), name="me-allocation-pause"),
    path("allocations/<str:allocation_id>/resume", api.AllocationResume.as_view(), name="me-allocation-resume"),
    path("usage", api.Usage.as_view(), name="me-usage"),
    path("calls", api.Calls.as_view(), name="me-calls"),
    path("keys", api.KeyList.as_view(), name="me-keys"),
    path("keys/<str:key_id>", selfservice.KeyDetailWithScope.as_view(), name="me-key"),
    path("keys/<str:key_id>/rotate", api.KeyRotate.as_view(), name="me-key-rotate"),
    path("device/<str:user_code>/approve", device.DeviceApprove.as_view(), name="me-device-approve"),
    path("device/<str:user_code>/deny", device.DeviceDeny.as_view(), name="me-device-deny"),
]
