import datetime as dt
from typing import Any

from django import forms
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from allocations.models import Allocation, Member


class AllocationChoiceField(forms.ModelMultipleChoiceField):
    def label_from_instance(self, obj: Allocation) -> str:
        if obj.display_name and obj.display_name != obj.model.slug:
            return f"{obj.display_name} ({obj.model.slug})"
        return obj.model.slug


class KeyCreateForm(forms.Form):
    name = forms.CharField(label=_("Key name"), max_length=100, help_text=_("For example: laptop, CI, notebook."))
    allocations = AllocationChoiceField(
        label=_("Allocations this key may use"),
        queryset=Allocation.objects.none(),
        widget=forms.CheckboxSelectMultiple,
        help_text=_("At most one allocation per model."),
        error_messages={"required": _("Choose at least one allocation.")},
    )
    expires_at = forms.DateTimeField(
        label=_("Expires"),
        required=False,
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d"],
        help_text=_("Optional. After this moment the key stops working. Blank: it never expires."),
    )

    def __init__(self, *args: Any, member: Member, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Only the member's own, non-revoked allocations: another member's id is simply "invalid".
        self.fields["allocations"].queryset = (  # type: ignore[attr-defined]
            Allocation.objects.owned_by(member)
            .exclude(status=Allocation.Status.REVOKED)
            .select_related("model")
            .order_by("created_at", "id")
        )

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if not name:
            raise forms.ValidationError(_("This field is required."))
        return name

    def clean_expires_at(self) -> dt.datetime | None:
        value = self.cleaned_data.get("expires_at")
        if value is not None and value <= timezone.now():
            raise forms.ValidationError(_("Choose a moment in the future."))
        return value


class KeyRenameForm(forms.Form):
    name = forms.CharField(label=_("New name"), max_length=100)

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if not name:
            raise forms.ValidationError(_("This field is required."))
        return name


class AlertPreferenceForm(forms.Form):
    near_cap = forms.BooleanField(label=_("Mail me when an allocation nears its cap"), required=False, initial=True)
    cap_reached = forms.BooleanField(
        label=_("Mail me when an allocation reaches its cap"), required=False, initial=True
    )
