"""The login and password reset views with their limits, and single sign-on; the rest of
/accounts/ is django.contrib.auth.urls."""

from django.urls import path

from .invitations import invitation_accept_page
from .sso import SSOCallbackView, SSOLoginView, sso_link, sso_refused
from .views import LoginView, PasswordResetView

urlpatterns = [
    path("login/", LoginView.as_view(), name="login"),
    path("password_reset/", PasswordResetView.as_view(), name="password_reset"),
    path("invitation/<str:token>/", invitation_accept_page, name="invitation_accept"),
    path("sso/login/", SSOLoginView.as_view(), name="oidc_authentication_init"),
    path("sso/callback/", SSOCallbackView.as_view(), name="oidc_authentication_callback"),
    path("sso/refused/", sso_refused, name="sso_refused"),
    path("sso/link/", sso_link, name="sso_link"),
]
