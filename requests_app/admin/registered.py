"""The admin: requests (list, request page, upload, actions), API clients and their keys.

Every action calls the service the API and the management commands call; pages only read.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase, HttpResponseRedirect
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.timesince import timesince
from django.views.decorators.http import require_POST

from imageproc.engine import csv_io
from requests_app.admin import views as admin_views
from requests_app.admin.views import NoAddOrChange, UploadForm, staff_user
from requests_app.models import ApiClient, ApiKey, ProcessingRequest, WebhookDelivery
from requests_app.services import webhooks
from requests_app.services.clients import api_client_create, api_client_enable_webhooks, api_key_create, api_key_revoke
from requests_app.services.errors import ServiceError
from requests_app.services.requests import request_reprocess, request_retry_failed

if TYPE_CHECKING:
    # Generic in django-stubs only; subscripting them at runtime would need django-stubs-ext.
    RequestAdminBase = admin.ModelAdmin[ProcessingRequest]
    ApiClientAdminBase = admin.ModelAdmin[ApiClient]
    ApiKeyAdminBase = admin.ModelAdmin[ApiKey]
    ApiKeyInlineBase = admin.TabularInline[ApiKey, ApiClient]
    ApiClientFormBase = forms.ModelForm[ApiClient]
else:
    RequestAdminBase = ApiClientAdminBase = ApiKeyAdminBase = admin.ModelAdmin
    ApiKeyInlineBase = admin.TabularInline
    ApiClientFormBase = forms.ModelForm

admin.site.site_header = "Image processing"
admin.site.site_title = "Image processing admin"
admin.site.index_title = "Run the service"
# The request list and page need the width more than a second menu (the header has shortcuts).
admin.site.enable_nav_sidebar = False


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# --- Processing requests --------------------------------------------------------------------


@admin.register(ProcessingRequest)
class ProcessingRequestAdmin(RequestAdminBase):
    list_display = ("request", "owner", "created", "status_badge", "progress", "saved", "duration")
    list_display_links = ("request",)
    list_filter = (
        "status",
        # Every user (clients and staff: a short table), not a DISTINCT over the requests.
        "owner",
        ("created_at", admin.DateFieldListFilter),
    )
    # A request id is matched exactly in get_search_results (no pattern lookups on UUIDs:
    # MongoDB cannot run them); file names by substring.
    search_fields = ("original_filename",)
    search_help_text = "A request id (the whole UUID) or part of a file name."
    ordering = ("-created_at",)
    list_select_related = ("owner",)
    list_per_page = 50
    # One COUNT for the filtered list, not a second one for the whole table.
    show_full_result_count = False
    actions = ("retry_failed_images", "reprocess_requests", "resend_webhooks", "download_output_csv")

    # --- The list -----------------------------------------------------------------------------

    @admin.display(description="Request", ordering="original_filename")
    def request(self, obj: ProcessingRequest) -> SafeString:
        return format_html(
            '<span class="ip-file">{}</span><br><code class="ip-id" title="{}">{}</code>',
            obj.original_filename or "(no file name)",
            obj.pk,
            str(obj.pk)[:8],
        )

    @admin.display(description="Created", ordering="created_at")
    def created(self, obj: ProcessingRequest) -> SafeString:
        local = timezone.localtime(obj.created_at)
        recent = timezone.now() - obj.created_at < timedelta(minutes=1)
        return format_html(
            '<span class="ip-nowrap">{}</span><br><span class="ip-quiet">{}</span>',
            local.strftime("%Y-%m-%d %H:%M"),
            "just now" if recent else f"{timesince(obj.created_at, depth=1)} ago",
        )

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj: ProcessingRequest) -> SafeString:
        return admin_views.status_badge(obj.status, obj.get_status_display())

    @admin.display(description="Images")
    def progress(self, obj: ProcessingRequest) -> SafeString:
        return admin_views.progress_bar(obj)

    @admin.display(description="Saved")
    def saved(self, obj: ProcessingRequest) -> str | SafeString:
        if not obj.bytes_in:
            return admin_views.NOTHING
        return format_html(
            '{} <span class="ip-quiet">({}%)</span><br><span class="ip-quiet">{} → {}</span>',
            admin_views.human_bytes(obj.bytes_saved),
            admin_views.saving_percent(obj.bytes_in, obj.bytes_out),
            admin_views.human_bytes(obj.bytes_in),
            admin_views.human_bytes(obj.bytes_out),
        )

    @admin.display(description="Duration")
    def duration(self, obj: ProcessingRequest) -> str:
        return admin_views.human_duration(obj.duration)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[ProcessingRequest], search_term: str
    ) -> tuple[QuerySet[ProcessingRequest], bool]:
        try:
            request_id = uuid.UUID(search_term.strip())
        except ValueError:
            return super().get_search_results(request, queryset, search_term)
        return queryset.filter(pk=request_id), False

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        extra_context = {"title": "Requests", "overview": admin_views.service_overview(), **(extra_context or {})}
        return super().changelist_view(request, extra_context)

    # --- Permissions: requests change only through services ----------------------------------

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Deleting would leave outputs in storage and cascade over up to millions of rows
        # through the admin's confirmation page; there is no service for it yet.
        return False

    # --- URLs -----------------------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        def wrap(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
            return self.admin_site.admin_view(view)

        name = "requests_app_processingrequest"
        status = admin_views.StaffRequestViewSet.as_view({"get": "status"})
        output = admin_views.StaffRequestViewSet.as_view({"get": "output"})
        return [
            path("upload/", wrap(self.upload_view), name=f"{name}_upload"),
            path("<str:object_id>/progress/", wrap(self.progress_view), name=f"{name}_progress"),
            path("<str:object_id>/retry/", wrap(self.retry_view), name=f"{name}_retry"),
            path("<str:object_id>/reprocess/", wrap(self.reprocess_view), name=f"{name}_reprocess"),
            path("<str:object_id>/resend-webhook/", wrap(self.resend_webhook_view), name=f"{name}_resend_webhook"),
            path("<str:pk>/status/", wrap(status), name=f"{name}_status"),
            path("<str:pk>/output/", wrap(output), name=f"{name}_output"),
            *super().get_urls(),
        ]

    def _get(self, request: HttpRequest, object_id: str, *, change: bool = False) -> ProcessingRequest:
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            raise Http404("No such request.")
        allowed = self.has_change_permission(request, obj) if change else self.has_view_permission(request, obj)
        if not allowed:
            raise PermissionDenied
        return obj

    def _page(self, obj: ProcessingRequest) -> HttpResponseRedirect:
        return redirect("admin:requests_app_processingrequest_change", obj.pk)

    # --- The request page ------------------------------------------------------------------

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        obj = self._get(request, object_id)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": obj.original_filename or str(obj.pk),
            "has_change_permission": self.has_change_permission(request, obj),
            **admin_views.request_page_context(obj, request),
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/requests_app/processingrequest/request_page.html", context)

    def progress_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return admin_views.progress_json(self._get(request, object_id))

    # --- Uploading -------------------------------------------------------------------------

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        return redirect("admin:requests_app_processingrequest_upload")

    def upload_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        csv_errors: csv_io.CsvInvalid | None = None
        if request.method == "POST":
            form = UploadForm(request.POST, request.FILES)
            if form.is_valid():
                try:
                    obj = admin_views.upload_csv(form, staff_user(request))
                except csv_io.CsvInvalid as exc:
                    csv_errors = exc
                except csv_io.CsvTooLarge as exc:
                    form.add_error("file", str(exc))
                except ServiceError as exc:  # too many requests in progress, ...
                    form.add_error(None, str(exc))
                else:
                    self.log_addition(request, obj, [{"added": {}}])
                    messages.success(
                        request,
                        f"Started processing {obj.original_filename}: {_plural(obj.products_total, 'product')}, "
                        f"{_plural(obj.images_total, 'image')}.",
                    )
                    return self._page(obj)
        else:
            form = UploadForm()
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Upload a CSV",
            "form": form,
            "csv_errors": csv_errors,
            "media": self.media + form.media,
        }
        return TemplateResponse(request, "admin/requests_app/processingrequest/upload.html", context)

    # --- Actions on one request (buttons of the request page) ---------------------------------

    def _retry(self, request: HttpRequest, obj: ProcessingRequest) -> int:
        count = request_retry_failed(request=obj)
        self.log_change(request, obj, f"Retried {_plural(count, 'failed image')}.")
        return count

    def _reprocess(self, request: HttpRequest, obj: ProcessingRequest) -> int:
        count = request_reprocess(request=obj)
        self.log_change(request, obj, f"Reprocessed {_plural(count, 'image')} from scratch.")
        return count

    def _resend(self, request: HttpRequest, obj: ProcessingRequest) -> Any:
        delivery = webhooks.webhook_resend(request=obj)
        if delivery is None:
            raise webhooks.WebhookNotConfigured("It has no webhook URL, and its client no default webhook URL.")
        self.log_change(request, obj, f"Resent the completion webhook (attempt {delivery.attempt}).")
        return delivery

    @staticmethod
    def _failed(request: HttpRequest, exc: Exception) -> None:
        messages.error(request, str(exc))

    def retry_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return require_POST(self._retry_view)(request, object_id)

    def _retry_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        obj = self._get(request, object_id, change=True)
        try:
            count = self._retry(request, obj)
        except ServiceError as exc:
            self._failed(request, exc)
        else:
            messages.success(request, f"Re-queued {_plural(count, 'failed image')}.")
        return self._page(obj)

    def reprocess_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        obj = self._get(request, object_id, change=True)
        if request.method != "POST":
            return self._reprocess_confirmation(request, [obj], form_action=request.path)
        try:
            count = self._reprocess(request, obj)
        except ServiceError as exc:
            self._failed(request, exc)
        else:
            messages.success(request, f"Reprocessing {_plural(count, 'image')} from scratch.")
        return self._page(obj)

    def resend_webhook_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return require_POST(self._resend_webhook_view)(request, object_id)

    def _resend_webhook_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        obj = self._get(request, object_id, change=True)
        try:
            self._resend(request, obj)
        except ServiceError as exc:
            self._failed(request, exc)
        else:
            messages.success(request, "The completion webhook is on its way.")
        return self._page(obj)

    def _reprocess_confirmation(
        self, request: HttpRequest, objects: list[ProcessingRequest], *, form_action: str = ""
    ) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Reprocess from scratch?",
            "objects": objects,
            "images": sum(o.images_total for o in objects),
            "unfinished": [o for o in objects if not o.is_finished],
            "form_action": form_action,
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/requests_app/processingrequest/reprocess_confirmation.html", context)

    # --- Actions on the list ----------------------------------------------------------------

    def _each(
        self,
        request: HttpRequest,
        queryset: QuerySet[ProcessingRequest],
        act: Callable[[HttpRequest, ProcessingRequest], Any],
    ) -> tuple[list[Any], list[str]]:
        results: list[Any] = []
        problems: list[str] = []
        for obj in queryset:
            try:
                results.append(act(request, obj))
            except ServiceError as exc:
                problems.append(f"{obj.original_filename or obj.pk}: {exc}")
        for problem in problems:
            messages.warning(request, problem)
        return results, problems

    @admin.action(description="Retry failed images", permissions=["change"])
    def retry_failed_images(self, request: HttpRequest, queryset: QuerySet[ProcessingRequest]) -> None:
        counts, _ = self._each(request, queryset, self._retry)
        if counts:
            requests_touched = sum(1 for c in counts if c)
            messages.success(
                request,
                f"Re-queued {_plural(sum(counts), 'failed image')} of {_plural(requests_touched, 'request')}.",
            )

    @admin.action(description="Reprocess from scratch…", permissions=["change"])
    def reprocess_requests(
        self, request: HttpRequest, queryset: QuerySet[ProcessingRequest]
    ) -> TemplateResponse | None:
        if request.POST.get("post") != "yes":
            return self._reprocess_confirmation(request, list(queryset))
        counts, _ = self._each(request, queryset, self._reprocess)
        if counts:
            messages.success(
                request, f"Reprocessing {_plural(sum(counts), 'image')} of {_plural(len(counts), 'request')}."
            )
        return None

    @admin.action(description="Resend the completion webhook", permissions=["change"])
    def resend_webhooks(self, request: HttpRequest, queryset: QuerySet[ProcessingRequest]) -> None:
        sent, _ = self._each(request, queryset, self._resend)
        if sent:
            messages.success(request, f"Resending the completion webhook of {_plural(len(sent), 'request')}.")

    @admin.action(description="Download the output CSV", permissions=["view"])
    def download_output_csv(
        self, request: HttpRequest, queryset: QuerySet[ProcessingRequest]
    ) -> HttpResponseRedirect | None:
        selected = list(queryset.values_list("pk", flat=True)[:2])
        if len(selected) != 1:
            messages.warning(request, "Select one request to download its output CSV.")
            return None
        return redirect("admin:requests_app_processingrequest_output", selected[0])


# --- API clients and keys --------------------------------------------------------------------


class ApiClientCreationForm(forms.Form):
    name = forms.CharField(max_length=150, help_text="The client's name; it owns the requests it uploads.")
    default_webhook_url = forms.CharField(
        required=False,
        max_length=2048,
        label="Default webhook URL",
        help_text="Optional: completion webhooks of requests uploaded without their own webhook URL go here.",
        widget=forms.URLInput(attrs={"size": 60}),
    )

    def clean_name(self) -> str:
        name = str(self.cleaned_data["name"]).strip()
        if ApiClient.objects.filter(user__username=name).exists():
            raise forms.ValidationError(f"A client called {name!r} exists already: open it to create a new key.")
        return name

    def clean_default_webhook_url(self) -> str:
        url = str(self.cleaned_data.get("default_webhook_url") or "").strip()
        if url:
            try:
                webhooks.webhook_url_check(url)
            except webhooks.WebhookUrlInvalid as exc:
                raise forms.ValidationError(str(exc)) from None
        return url


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

    class Meta:
        model = ApiClient
        fields = ("default_webhook_url",)


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
        return admin_views.status_badge("active", "Active")
    return admin_views.status_badge("revoked", "Revoked")


@admin.register(ApiClient)
class ApiClientAdmin(ApiClientAdminBase):
    list_display = ("name", "keys", "created_at", "default_webhook_url", "webhooks", "requests_link")
    list_select_related = ("user",)
    search_fields = ("user__username",)
    ordering = ("user__username",)
    form = ApiClientChangeForm
    inlines = (ApiKeyInline,)
    readonly_fields = ("name", "created_at", "webhook_secret_display", "webhooks", "requests_link")
    fieldsets = (
        (None, {"fields": ("name", "created_at", "requests_link")}),
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
        return format_html_join_br(key_display(key) for key in active)

    @admin.display(description="Webhooks")
    def webhooks(self, obj: ApiClient) -> SafeString:
        if obj.webhook_disabled_at:
            return format_html(
                '{} <span class="ip-quiet">since {}: {}</span>',
                admin_views.status_badge("failed", "Disabled"),
                obj.webhook_disabled_at.strftime("%Y-%m-%d %H:%M"),
                obj.webhook_disabled_reason,
            )
        return admin_views.status_badge("completed", "Enabled")

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
            client, _ = api_client_create(name=form.cleaned_data["name"])
            if form.cleaned_data["default_webhook_url"]:
                webhooks.api_client_set_default_webhook_url(client=client, url=form.cleaned_data["default_webhook_url"])
            raw = api_key_create(client=client)
            self.log_addition(request, client, [{"added": {}}])
            return self._secret_page(request, client, api_key=raw, webhook_secret=client.webhook_secret)
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
        messages.success(request, f"Revoked {_plural(revoked, 'key')}.")


def format_html_join_br(parts: Any) -> SafeString:
    return format_html_join(SafeString("<br>"), "{}", ((part,) for part in parts))


# --- Webhook deliveries (the delivery log; requests_app/webhooks.py) --------------------------

if TYPE_CHECKING:
    DeliveryAdminBase = admin.ModelAdmin[WebhookDelivery]
else:  # ModelAdmin is generic in django-stubs only
    DeliveryAdminBase = admin.ModelAdmin


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(NoAddOrChange, DeliveryAdminBase):
    """One row per attempt, read-only. The resend action sends a request's completion event
    again, with the same webhook-id and body (webhooks.webhook_resend)."""

    list_display = (
        "created_at",
        "event_type",
        "request_link",
        "attempt",
        "status",
        "status_code",
        "latency_ms",
        "next_retry_at",
        "short_error",
    )
    list_filter = ("status", "event_type", ("created_at", admin.DateFieldListFilter))
    # Text fields only: no pattern lookups on UUIDs (MongoDB cannot run them).
    search_fields = ("event_id", "url")
    search_help_text = "An event id (webhook-id) or part of a URL."
    ordering = ("-created_at",)
    show_full_result_count = False
    list_per_page = 50
    actions = ("resend_webhook",)
    fields = readonly_fields = (
        "request_link",
        "event_id",
        "event_type",
        "url",
        "attempt",
        "status",
        "status_code",
        "latency_ms",
        "error",
        "created_at",
        "attempted_at",
        "next_retry_at",
        "payload_pretty",
    )

    @admin.display(description="Request")
    def request_link(self, obj: WebhookDelivery) -> SafeString:
        url = reverse("admin:requests_app_processingrequest_change", args=[obj.request_id])
        return format_html('<a href="{}"><code>{}</code></a>', url, str(obj.request_id)[:8])

    @admin.display(description="Error")
    def short_error(self, obj: WebhookDelivery) -> str:
        return obj.error if len(obj.error) <= 80 else obj.error[:79] + "…"

    @admin.display(description="Payload (the exact body sent)")
    def payload_pretty(self, obj: WebhookDelivery) -> SafeString:
        return format_html("<pre>{}</pre>", obj.payload)

    def has_resend_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("requests_app.change_webhookdelivery")

    @admin.action(description="Resend the request's completion webhook now", permissions=["resend"])
    def resend_webhook(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        request_ids = list(dict.fromkeys(queryset.values_list("request_id", flat=True)))
        sent = 0
        for obj in ProcessingRequest.objects.filter(pk__in=request_ids):
            try:
                delivery = webhooks.webhook_resend(request=obj)
            except ServiceError as exc:
                messages.warning(request, f"{obj.pk}: {exc}")
                continue
            if delivery is None:
                messages.warning(request, f"{obj.pk}: no webhook URL (none on the request, no client default).")
            else:
                sent += 1
        if sent:
            messages.success(request, f"Resending the completion webhook of {_plural(sent, 'request')}.")
