from django.urls import path

from . import device

urlpatterns = [
    path("device/code", device.device_code, name="oauth-device-code"),
    path("device/token", device.device_token, name="oauth-device-token"),
]
