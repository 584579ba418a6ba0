"""The login view with the failed-login limit; the rest of /accounts/ is django.contrib.auth.urls."""

from django.urls import path

from .views import LoginView

urlpatterns = [path("login/", LoginView.as_view(), name="login")]
