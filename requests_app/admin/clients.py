"""API clients and their keys in the admin. A new client's API key and signing secret, and
every new key or secret after, are shown once, on the response that made them."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from requests_app.admin.display import NoAddOrChange, plural, status_badge
from requests_app.admin.forms import ApiClientChangeForm, ApiClientCreationForm, add_service_error
from requests_app.models import ApiClient, ApiKey
from requests_app.services import webhooks
from requests_app.services.clients import (
    api_client_enable_webhooks,
    api_client_set_weight,
    api_key_create,
    api_key_revoke,
)
from requests_app.services.errors import ApiClientExists, ServiceError
from requests_app.services.onboarding import api_client_onboard
from requests_app.services.webhook_urls import WebhookUrlInvalid

if TYPE_CHECKING:
    # Generic in django-stubs only; subscripting them at runtime would need django-stubs-ext.
    ApiClientAdminBase = admin.ModelAdmin[ApiClient]
    ApiKeyAdminBase = admin.ModelAdmin[ApiKey]
    ApiKeyInlineBase = admin.TabularInline[ApiKey, ApiClient]
else:
    ApiClientAdminBase = ApiKeyAdminBase = admin.ModelAdmin
    ApiKeyInlineBase = admin.TabularInline


class ApiKeyInline(ApiKeyInlineBase):
    model = ApiKey
    extra = 0
    max_num = 0
    can_delete = False
    fields = readonly_fields = ("key", "created_at", "last_used_at", "state", "revoke")
    verbose_name = "API key"
    verbose_name_plural = "API keys (only their prefixes are kept)"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a key is made on its client's page, where the raw key can be shown once

    @admin.display(description="Key")
    def key(self, obj: ApiKey) -> SafeString:
        return key_display(obj)

    @admin.display(description="State")
    def state(self, obj: ApiKey) -> SafeString:
        return key_state(obj)

    @admin.display(description="")
    def revoke(self, obj: ApiKey) -> SafeString | str:
        if not obj.is_active:
            return ""
        url = reverse("admin:requests_app_apiclient_revoke_key", args=[obj.client_id, obj.prefix])
        return format_html('<a class="ip-danger-link" href="{}">Revoke…</a>', url)


def key_display(key: ApiKey) -> SafeString:
    return format_html('<code class="ip-key">ipk_{}_…</code>', key.prefix)


def key_state(key: ApiKey) -> SafeString:
    if key.is_active:
        return status_badge("active", "Active")
    return status_badge("revoked", "Revoked")


@admin.register(ApiClient)
class ApiClientAdmin(ApiClientAdminBase):
    list_display = ("name", "keys", "created_at", "weight", "default_webhook_url", "webhooks", "requests_link")
    list_select_related = ("user",)
    search_fields = ("user__username",)
    ordering = ("user__username",)
    form = ApiClientChangeForm
    inlines = (ApiKeyInline,)
    readonly_fields = ("name", "created_at", "webhook_secret_display", "webhooks", "requests_link")
    fieldsets = (
        (None, {"fields": ("name", "created_at", "weight", "requests_link")}),
        (
            "Webhooks",
            {"fields": ("default_webhook_url", "webhook_secret_display", "webhooks", "re_enable_webhooks")},
        ),
    )
    change_form_template = "admin/requests_app/apiclient/change_form.html"

    def get_fieldsets(self, request: HttpRequest, obj: ApiClient | None = None) -> Any:
        if obj is not None and obj.webhook_disabled_at:
            return self.fieldsets
        # The switch only means something while a 410 keeps webhooks off.
        main, (title, options) = self.fieldsets
        return (main, (title, {"fields": tuple(f for f in options["fields"] if f != "re_enable_webhooks")}))

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        # New clients come from the add page, which shows their key: no "save and add another".
        extra_context = {"show_save_and_add_another": False, **(extra_context or {})}
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.display(description="Name", ordering="user__username")
    def name(self, obj: ApiClient) -> str:
        return obj.user.get_username()

    @admin.display(description="Active keys")
    def keys(self, obj: ApiClient) -> SafeString | str:
        # Filled for the whole page at once in get_changelist_instance: no query per row.
        active = getattr(obj, "active_keys", None)
        if active is None:
            active = list(obj.keys.active())
        if not active:
            return "none"
        return format_html_join(SafeString("<br>"), "{}", ((key_display(key),) for key in active))

    @admin.display(description="Webhooks")
    def webhooks(self, obj: ApiClient) -> SafeString:
        if obj.webhook_disabled_at:
            return format_html(
                '{} <span class="ip-quiet">since {}: {}</span>',
                status_badge("failed", "Disabled"),
                obj.webhook_disabled_at.strftime("%Y-%m-%d %H:%M"),
                obj.webhook_disabled_reason,
            )
        return status_badge("completed", "Enabled")

    @admin.display(description="Signing secret")
    def webhook_secret_display(self, obj: ApiClient) -> SafeString:
        rotated = ""
        if obj.previous_webhook_secret and obj.webhook_secret_rotated_at:
            rotated = f" (rotated {obj.webhook_secret_rotated_at:%Y-%m-%d %H:%M}; the previous one still signs)"
        return format_html(
            '<code class="ip-key">{}…</code><span class="ip-quiet">{}</span>', obj.webhook_secret[:10], rotated
        )

    @admin.display(description="Requests")
    def requests_link(self, obj: ApiClient) -> SafeString:
        url = reverse("admin:requests_app_processingrequest_changelist") + f"?owner__id__exact={obj.user_id}"
        return format_html('<a href="{}">Requests →</a>', url)

    def get_changelist_instance(self, request: HttpRequest) -> Any:
        changelist = super().get_changelist_instance(request)
        clients = list(changelist.result_list)
        by_client: dict[Any, list[ApiKey]] = {client.pk: [] for client in clients}
        for key in ApiKey.objects.active().filter(client_id__in=list(by_client)).order_by("created_at"):
            by_client[key.client_id].append(key)
        for client in clients:
            client.active_keys = by_client[client.pk]
        return changelist

    # --- Creating a client, and new keys: the raw key is shown once, on this response only --

    def get_urls(self) -> list[URLPattern]:
        def wrap(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
            return self.admin_site.admin_view(view)

        name = "requests_app_apiclient"
        return [
            path("<str:object_id>/new-key/", wrap(self.new_key_view), name=f"{name}_new_key"),
            path("<str:object_id>/rotate-webhook-secret/", wrap(self.rotate_secret_view), name=f"{name}_rotate_secret"),
            path("<str:object_id>/keys/<str:prefix>/revoke/", wrap(self.revoke_key_view), name=f"{name}_revoke_key"),
            *super().get_urls(),
        ]

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = ApiClientCreationForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                onboarded = api_client_onboard(
                    name=form.cleaned_data["name"],
                    default_webhook_url=form.cleaned_data["default_webhook_url"],
                    must_be_new=True,
                )
            except ServiceError as exc:  # a name taken, a webhook URL refused
                add_service_error(
                    form, exc, field_of={ApiClientExists: "name", WebhookUrlInvalid: "default_webhook_url"}
                )
            else:
                client = onboarded.client
                self.log_addition(request, client, [{"added": {}}])
                return self._secret_page(
                    request, client, api_key=onboarded.raw_key, webhook_secret=onboarded.webhook_secret
                )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Add an API client",
            "form": form,
        }
        return TemplateResponse(request, "admin/requests_app/apiclient/add.html", context)

    def _client(self, request: HttpRequest, object_id: str) -> ApiClient:
        client = self.get_object(request, unquote(object_id))
        if client is None:
            raise Http404("No such client.")
        if not self.has_change_permission(request, client):
            raise PermissionDenied
        return client

    def _secret_page(
        self, request: HttpRequest, client: ApiClient, *, api_key: str = "", webhook_secret: str = ""
    ) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": client,
            "title": f"Credentials of {client}",
            "api_key": api_key,
            "webhook_secret": webhook_secret,
            "base_url": settings.PUBLIC_BASE_URL,
        }
        response = TemplateResponse(request, "admin/requests_app/apiclient/secret.html", context)
        response["Cache-Control"] = "no-store"
        return response

    def _confirm(self, request: HttpRequest, client: ApiClient, **context: Any) -> TemplateResponse:
        context = {**self.admin_site.each_context(request), "opts": self.opts, "original": client, **context}
        return TemplateResponse(request, "admin/requests_app/confirm.html", context)

    def new_key_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        client = self._client(request, object_id)
        if request.method != "POST":
            return self._confirm(
                request,
                client,
                title=f"New API key for {client}?",
                message="The key is shown once, on the next page. The client's other keys keep working.",
                button="Create a key",
            )
        raw = api_key_create(client=client)
        self.log_change(request, client, f"Created API key {raw[4:12]}.")
        return self._secret_page(request, client, api_key=raw)

    def rotate_secret_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        client = self._client(request, object_id)
        if request.method != "POST":
            return self._confirm(
                request,
                client,
                title=f"Rotate the webhook signing secret of {client}?",
                message=(
                    f"Deliveries carry signatures with both the old and the new secret for "
                    f"{settings.WEBHOOK_SECRET_ROTATION_HOURS} hours, then with the new one only. "
                    "The new secret is shown once, on the next page."
                ),
                button="Rotate the secret",
            )
        secret = webhooks.api_client_rotate_webhook_secret(client=client)
        self.log_change(request, client, "Rotated the webhook signing secret.")
        return self._secret_page(request, client, webhook_secret=secret)

    def revoke_key_view(self, request: HttpRequest, object_id: str, prefix: str) -> HttpResponse:
        client = self._client(request, object_id)
        key = ApiKey.objects.filter(client=client, prefix=prefix).first()
        if key is None:
            raise Http404("No such key.")
        if request.method != "POST":
            return self._confirm(
                request,
                client,
                title=f"Revoke the key ipk_{prefix}_… of {client}?",
                message="Requests with this key are refused from now on. This cannot be undone.",
                button="Revoke the key",
                danger=True,
            )
        api_key_revoke(prefix=prefix)
        self.log_change(request, client, f"Revoked API key {prefix}.")
        messages.success(request, f"Revoked the key ipk_{prefix}_….")
        return redirect("admin:requests_app_apiclient_change", client.pk)

    def save_model(self, request: HttpRequest, obj: ApiClient, form: Any, change: bool) -> None:
        # Field by field through the services, never obj.save(): a full save would write back
        # a webhook secret that a rotation may have changed meanwhile.
        if "default_webhook_url" in form.changed_data:
            webhooks.api_client_set_default_webhook_url(client=obj, url=obj.default_webhook_url)
        if form.cleaned_data.get("re_enable_webhooks"):
            api_client_enable_webhooks(client=obj)
        if "weight" in form.changed_data:
            api_client_set_weight(client=obj, weight=obj.weight)


class RevokedFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("active", "Active"), ("revoked", "Revoked")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(NoAddOrChange, ApiKeyAdminBase):
    """Keys are made on their client's page, where the raw key can be shown once."""

    list_display = ("key", "client", "created_at", "last_used_at", "revoked_at", "state")
    list_filter = (RevokedFilter,)
    list_select_related = ("client__user",)
    search_fields = ("prefix",)
    search_help_text = "The 8 characters after ipk_."
    actions = ("revoke_keys",)
    fields = ("key", "client", "created_at", "last_used_at", "revoked_at", "state")
    readonly_fields = fields

    @admin.display(description="Key", ordering="prefix")
    def key(self, obj: ApiKey) -> SafeString:
        return key_display(obj)

    @admin.display(description="State")
    def state(self, obj: ApiKey) -> SafeString:
        return key_state(obj)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[ApiKey], search_term: str
    ) -> tuple[QuerySet[ApiKey], bool]:
        prefix = search_term.strip().removeprefix("ipk_")[:8]
        return (queryset.filter(prefix=prefix), False) if prefix else (queryset, False)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("requests_app.change_apikey")

    @admin.action(description="Revoke selected keys", permissions=["revoke"])
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        revoked = 0
        for prefix in queryset.filter(revoked_at__isnull=True).values_list("prefix", flat=True):
            api_key_revoke(prefix=prefix)
            revoked += 1
        messages.success(request, f"Revoked {plural(revoked, 'key')}.")
