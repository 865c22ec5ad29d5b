"""The admin's own forms: uploading a CSV, creating an API client, a client's webhook settings.

The fields check the shape of the input only. The rules (quality and format, the webhook URL
guard, the CSV's size and contents, a client's unique name) are the services': a form builds
the service's own input (RequestOptions checks itself) or the view calls the service, and a
domain error comes back as a form error through `add_service_error`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from django import forms
from django.conf import settings

from requests_app.models import ApiClient, OutputFormat
from requests_app.services.errors import InvalidOptions, ServiceError
from requests_app.services.requests import QUALITY_LEVELS, QUALITY_MAX, QUALITY_MIN, RequestOptions
from requests_app.services.webhook_urls import WebhookUrlInvalid, webhook_url_check

if TYPE_CHECKING:
    # Generic in django-stubs only; subscripting it at runtime would need django-stubs-ext.
    ApiClientFormBase = forms.ModelForm[ApiClient]
else:
    ApiClientFormBase = forms.ModelForm


def add_service_error(
    form: forms.Form, exc: ServiceError, *, field_of: Mapping[type[ServiceError], str] | None = None
) -> None:
    """Show a service's domain error on the form: InvalidOptions under each field it names;
    another error under the field `field_of` gives for its class, else above the form."""
    if isinstance(exc, InvalidOptions):
        for name, messages in exc.errors.items():
            form.add_error(name if name in form.fields else None, messages)
        return
    field = next((name for cls, name in (field_of or {}).items() if isinstance(exc, cls)), None)
    form.add_error(field if field in form.fields else None, str(exc))


class UploadForm(forms.Form):
    file = forms.FileField(
        label="CSV file",
        help_text="Columns: S. No., Product Name, Input Image Urls (comma-separated URLs). A header row is required.",
    )
    # Text: a number or an automatic level. The range and the levels are RequestOptions' rule.
    quality = forms.CharField(
        max_length=20,
        widget=forms.TextInput(attrs={"size": 10, "list": "quality-levels"}),
        help_text=f"The encoder quality, {QUALITY_MIN} to {QUALITY_MAX}, or an automatic one, per image the lowest "
        f"quality that looks right: {', '.join(QUALITY_LEVELS)} (auto = auto:good). "
        "Empty with the format auto: auto:good.",
        required=False,
    )
    output_format = forms.ChoiceField(
        choices=OutputFormat.choices,
        initial=OutputFormat.JPEG,
        help_text="AVIF is the smallest and the slowest to encode; auto takes, per image, the smallest of JPEG, "
        "WebP and AVIF at an automatic quality.",
    )
    keep_copyright = forms.BooleanField(
        required=False,
        initial=True,
        label="Keep copyright",
        help_text="Keep the EXIF Artist and Copyright and the XMP rights in the outputs; other metadata is dropped.",
    )
    webhook_url = forms.CharField(
        required=False,
        strip=False,  # RequestOptions normalises it
        label="Webhook URL",
        help_text="Optional: receives a signed POST when the request has finished.",
        widget=forms.URLInput(attrs={"size": 60, "placeholder": "https://example.com/hooks/images"}),
    )
    sizes = forms.CharField(
        required=False,
        max_length=100,
        label="Sizes",
        help_text="Optional renditions: bounding-box edges in pixels, e.g. 1600,800,200. Each image is stored once per "
        "size, never enlarged; the output CSV gets a column per further size.",
        widget=forms.TextInput(attrs={"size": 30, "placeholder": "1600,800,200"}),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["quality"].initial = settings.IMAGE_DEFAULT_QUALITY
        # The admin's own <input type=file> styling expects no extra attributes.
        self.fields["file"].widget.attrs["accept"] = ".csv,text/csv"

    def clean(self) -> dict[str, Any] | None:
        """The options as the service takes them, in cleaned_data["options"]: RequestOptions
        checks every rule of them (quality, format, the webhook URL guard) and names each
        field it refuses. The quality is text: digits are a number, anything else a level."""
        data = super().clean() or {}
        if "quality" in data and "output_format" in data:
            quality: str = data["quality"].strip()
            try:
                data["options"] = RequestOptions(
                    quality=int(quality) if quality.isdecimal() else (quality or None),
                    output_format=data["output_format"],
                    keep_copyright=bool(data.get("keep_copyright")),
                    webhook_url=data["webhook_url"],
                    sizes=data.get("sizes", ""),
                )
            except InvalidOptions as exc:
                add_service_error(self, exc)
        return data


class ApiClientCreationForm(forms.Form):
    name = forms.CharField(max_length=150, help_text="The client's name; it owns the requests it uploads.")
    default_webhook_url = forms.CharField(
        required=False,
        max_length=2048,
        label="Default webhook URL",
        help_text="Optional: completion webhooks of requests uploaded without their own webhook URL go here.",
        widget=forms.URLInput(attrs={"size": 60}),
    )


class ApiClientChangeForm(ApiClientFormBase):
    default_webhook_url = forms.URLField(
        required=False,
        max_length=2048,
        assume_scheme="https",
        label="Default webhook URL",
        help_text="Completion webhooks of requests uploaded without their own webhook URL go here.",
        widget=forms.URLInput(attrs={"size": 60}),
    )
    re_enable_webhooks = forms.BooleanField(
        required=False, label="Re-enable webhooks", help_text="The receiver is back: deliver webhooks again."
    )
    # Not required: a form posted without it (a script, an older page) leaves the weight as it is.
    weight = forms.FloatField(
        required=False,
        min_value=0.1,
        max_value=100.0,
        help_text="Its share of the workers against other clients with work at the same time: "
        "2 gets twice the share of 1, 0.5 half of it (docs/sharing.md).",
    )

    def clean_weight(self) -> float:
        value = self.cleaned_data.get("weight")
        return float(self.instance.weight if value is None else value)

    def clean_default_webhook_url(self) -> str:
        # The service's own check, here so that a refused URL is shown on the form: saving
        # (api_client_set_default_webhook_url, in ApiClientAdmin.save_model) comes too late.
        url = str(self.cleaned_data.get("default_webhook_url") or "")
        if url and "default_webhook_url" in self.changed_data:
            try:
                webhook_url_check(url)
            except WebhookUrlInvalid as exc:
                raise forms.ValidationError(str(exc)) from None
        return url

    class Meta:
        model = ApiClient
        fields = ("default_webhook_url", "weight")
