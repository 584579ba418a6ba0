"""The login view with the failed-login limit and single sign-on; the rest of /accounts/ is
django.contrib.auth.urls."""

from django.urls import path

from .sso import SSOCallbackView, SSOLoginView, sso_refused
from .views import LoginView

urlpatterns = [
    path("login/", LoginView.as_view(), name="login"),
    path("sso/login/", SSOLoginView.as_view(), name="oidc_authentication_init"),
    path("sso/callback/", SSOCallbackView.as_view(), name="oidc_authentication_callback"),
    path("sso/refused/", sso_refused, name="sso_refused"),
]
