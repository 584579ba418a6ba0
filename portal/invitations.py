"""The invitation accept page: set a password that meets the policy, then be signed in."""

from django.contrib.auth import login
from django.contrib.auth.forms import SetPasswordForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters

from allocations.exceptions import GatewayError
from allocations.invitations import InvitationGone, invitation_accept, invitation_valid

BACKEND = "django.contrib.auth.backends.ModelBackend"


@never_cache
@sensitive_post_parameters("new_password1", "new_password2")
def invitation_accept_page(request: HttpRequest, token: str) -> HttpResponse:
    try:
        invitation = invitation_valid(token=token)
    except InvitationGone:
        return render(request, "registration/invitation_invalid.html", status=410)
    form = SetPasswordForm(invitation.member, request.POST or None)
    if request.method == "POST" and form.is_valid():  # the form checks the policy with the member in view
        try:
            member = invitation_accept(token=token, password=form.cleaned_data["new_password1"])
        except GatewayError:
            return render(request, "registration/invitation_invalid.html", status=410)
        login(request, member, backend=BACKEND)
        return redirect("portal:dashboard")
    status = 400 if request.method == "POST" else 200
    context = {"form": form, "invited": invitation.member}
    return render(request, "registration/invitation_accept.html", context, status=status)
