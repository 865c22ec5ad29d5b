"""Processing requests in the admin: the list, the request page and its live progress, the CSV
upload, and retry, reprocess and resend (buttons of the page and actions of the list).

Every action calls the service the API and the management commands call; the domain errors
they raise become admin messages in one place, `_call_service`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.utils import unquote
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase, HttpResponseRedirect
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.timesince import timesince

from imageproc.engine import csv_io
from requests_app.admin import request_page
from requests_app.admin.display import plural, progress_bar, size_change, status_badge
from requests_app.admin.forms import UploadForm, add_service_error
from requests_app.admin.overview import service_overview
from requests_app.admin.staff_api import StaffRequestViewSet
from requests_app.formatting import NOTHING, human_bytes, human_duration
from requests_app.models import ProcessingRequest, WebhookDelivery
from requests_app.services import webhooks
from requests_app.services.errors import ServiceError
from requests_app.services.requests import request_create, request_reprocess, request_retry_failed

if TYPE_CHECKING:
    # Generic in django-stubs only; subscripting it at runtime would need django-stubs-ext.
    RequestAdminBase = admin.ModelAdmin[ProcessingRequest]
else:
    RequestAdminBase = admin.ModelAdmin

# What `_call_service` returns when the service refused.
REFUSED = object()


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
        return status_badge(obj.status, obj.get_status_display())

    @admin.display(description="Images")
    def progress(self, obj: ProcessingRequest) -> SafeString:
        return progress_bar(obj)

    @admin.display(description="Saved")
    def saved(self, obj: ProcessingRequest) -> str | SafeString:
        if not obj.bytes_in:
            return NOTHING
        return format_html(
            '{}<br><span class="ip-quiet">{} → {}</span>',
            size_change(obj.bytes_in, obj.bytes_out, absolute=True),
            human_bytes(obj.bytes_in),
            human_bytes(obj.bytes_out),
        )

    @admin.display(description="Duration")
    def duration(self, obj: ProcessingRequest) -> str:
        return human_duration(obj.duration)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[ProcessingRequest], search_term: str
    ) -> tuple[QuerySet[ProcessingRequest], bool]:
        try:
            request_id = uuid.UUID(search_term.strip())
        except ValueError:
            return super().get_search_results(request, queryset, search_term)
        return queryset.filter(pk=request_id), False

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        extra_context = {"title": "Requests", "overview": service_overview(), **(extra_context or {})}
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
        status = StaffRequestViewSet.as_view({"get": "status"})
        output = StaffRequestViewSet.as_view({"get": "output"})
        return [
            path("upload/", wrap(self.upload_view), name=f"{name}_upload"),
            path("<str:object_id>/progress/", wrap(self.progress_view), name=f"{name}_progress"),
            path("<str:object_id>/retry/", wrap(self.retry_view), name=f"{name}_retry"),
            path("<str:object_id>/reprocess/", wrap(self.reprocess_view), name=f"{name}_reprocess"),
            path(
                "<str:object_id>/resend-webhook/",
                wrap(self.resend_webhook_view),
                name=f"{name}_resend_webhook",
            ),
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
            **request_page.request_page_context(obj, request),
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/requests_app/processingrequest/request_page.html", context)

    def progress_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return request_page.progress_json(self._get(request, object_id))

    # --- Uploading -------------------------------------------------------------------------

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        return redirect("admin:requests_app_processingrequest_upload")

    def upload_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        csv_errors: csv_io.CsvInvalid | None = None
        form = UploadForm(request.POST, request.FILES) if request.method == "POST" else UploadForm()
        if form.is_bound and form.is_valid():
            # The logged-in staff member's request, exactly as POST /csv/upload would make it.
            upload, options = form.cleaned_data["file"], form.cleaned_data["options"]
            try:
                # Admin views run behind admin_site.admin_view: the user is an active staff member.
                obj, _ = request_create(
                    owner=cast(User, request.user), csv_file=upload, filename=upload.name or "", options=options
                )
            except csv_io.CsvInvalid as exc:
                csv_errors = exc
            except csv_io.CsvTooLarge as exc:
                form.add_error("file", str(exc))
            except ServiceError as exc:  # a webhook URL refused, too many requests in progress, ...
                add_service_error(form, exc)
            else:
                self.log_addition(request, obj, [{"added": {}}])
                messages.success(
                    request,
                    f"Started processing {obj.original_filename}: {plural(obj.products_total, 'product')}, "
                    f"{plural(obj.images_total, 'image')}.",
                )
                return self._page(obj)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Upload a CSV",
            "form": form,
            "csv_errors": csv_errors,
            "media": self.media + form.media,
        }
        return TemplateResponse(request, "admin/requests_app/processingrequest/upload.html", context)

    # --- Retry, reprocess, resend: one service call each, logged in the request's history ----

    def _retry(self, request: HttpRequest, obj: ProcessingRequest) -> int:
        count = request_retry_failed(request=obj)
        self.log_change(request, obj, f"Retried {plural(count, 'failed image')}.")
        return count

    def _reprocess(self, request: HttpRequest, obj: ProcessingRequest) -> int:
        count = request_reprocess(request=obj)
        self.log_change(request, obj, f"Reprocessed {plural(count, 'image')} from scratch.")
        return count

    def _resend(self, request: HttpRequest, obj: ProcessingRequest) -> WebhookDelivery:
        # Without a URL to send to, WebhookNotConfigured: a message like any other refusal.
        delivery = webhooks.webhook_resend(request=obj)
        self.log_change(request, obj, f"Resent the completion webhook (attempt {delivery.attempt}).")
        return delivery

    @staticmethod
    def _call_service(
        request: HttpRequest,
        obj: ProcessingRequest,
        act: Callable[[HttpRequest, ProcessingRequest], Any],
        *,
        in_list: bool = False,
    ) -> Any:
        """Run one action on one request. A domain error (ServiceError) becomes an admin
        message here, the one place: an error on the request page; in a list action, a warning
        that names the request, and the other requests go on. Returns REFUSED then."""
        try:
            return act(request, obj)
        except ServiceError as exc:
            if in_list:
                messages.warning(request, f"{obj.original_filename or obj.pk}: {exc}")
            else:
                messages.error(request, str(exc))
            return REFUSED

    @staticmethod
    def _confirmed(request: HttpRequest) -> bool:
        """A stray click never acts: only the confirmation page's POST (post=yes) does."""
        return request.method == "POST" and request.POST.get("post") == "yes"

    def retry_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        obj = self._get(request, object_id, change=True)
        if not self._confirmed(request):
            return self._retry_confirmation(request, [obj], form_action=request.path)
        count = self._call_service(request, obj, self._retry)
        if count is not REFUSED:
            messages.success(request, f"Re-queued {plural(count, 'failed image')}.")
        return self._page(obj)

    def reprocess_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        obj = self._get(request, object_id, change=True)
        if request.method != "POST":
            return self._reprocess_confirmation(request, [obj], form_action=request.path)
        count = self._call_service(request, obj, self._reprocess)
        if count is not REFUSED:
            messages.success(request, f"Reprocessing {plural(count, 'image')} from scratch.")
        return self._page(obj)

    def resend_webhook_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        obj = self._get(request, object_id, change=True)
        if not self._confirmed(request):
            return self._resend_confirmation(request, [obj], form_action=request.path)
        if self._call_service(request, obj, self._resend) is not REFUSED:
            messages.success(request, "The completion webhook is on its way.")
        return self._page(obj)

    def _reprocess_confirmation(
        self, request: HttpRequest, objects: list[ProcessingRequest], *, form_action: str = ""
    ) -> TemplateResponse:
        # The service, asked with dry_run, says how many images it would reprocess; the
        # requests it would refuse (not finished) are named in warnings above the question.
        images = self._each(request, objects, lambda _, obj: request_reprocess(request=obj, dry_run=True))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Reprocess from scratch?",
            "objects": objects,
            "images": sum(images),
            "form_action": form_action,
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/requests_app/processingrequest/reprocess_confirmation.html", context)

    def _action_confirmation(
        self,
        request: HttpRequest,
        objects: list[ProcessingRequest],
        *,
        title: str,
        message: str,
        button: str,
        action: str,
        form_action: str = "",
        selected: list[str] | None = None,
    ) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": title,
            "message": message,
            "button": button,
            "objects": objects,
            "action": action,
            "form_action": form_action,
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
            # What the list action is posted again with: the requests, or the rows of another
            # list (the delivery log's action).
            "selected": selected if selected is not None else [str(obj.pk) for obj in objects],
        }
        return TemplateResponse(request, "admin/requests_app/processingrequest/action_confirmation.html", context)

    def _retry_confirmation(
        self, request: HttpRequest, objects: list[ProcessingRequest], *, form_action: str = ""
    ) -> TemplateResponse:
        # The service, asked with dry_run, counts what it would re-queue and names (in
        # warnings) the requests it would refuse.
        counts = self._each(request, objects, lambda _, obj: request_retry_failed(request=obj, dry_run=True))
        return self._action_confirmation(
            request,
            objects,
            title="Retry the failed images?",
            message=f"{plural(sum(counts), 'failed image')} of "
            f"{'this request' if len(objects) == 1 else plural(len(objects), 'request')} "
            "will be fetched and compressed again; the request goes back to processing.",
            button="Yes, retry",
            action="retry_failed_images",
            form_action=form_action,
        )

    def _resend_confirmation(
        self,
        request: HttpRequest,
        objects: list[ProcessingRequest],
        *,
        form_action: str = "",
        action: str = "resend_webhooks",
        selected: list[str] | None = None,
    ) -> TemplateResponse:
        targets = sorted({request_page.webhook_target(obj) or "no webhook URL" for obj in objects})
        which = "this request" if len(objects) == 1 else plural(len(objects), "request")
        return self._action_confirmation(
            request,
            objects,
            title="Resend the completion webhook?",
            message=f"The completion event of {which} is sent again now, with the same webhook-id, "
            f"to {', '.join(targets)}.",
            button="Yes, resend",
            action=action,
            form_action=form_action,
            selected=selected,
        )

    # --- Actions on the list ----------------------------------------------------------------

    def _each(
        self,
        request: HttpRequest,
        queryset: QuerySet[ProcessingRequest] | list[ProcessingRequest],
        act: Callable[[HttpRequest, ProcessingRequest], Any],
    ) -> list[Any]:
        """The results of `act` on every selected request that the service did not refuse."""
        results = (self._call_service(request, obj, act, in_list=True) for obj in queryset)
        return [result for result in results if result is not REFUSED]

    @admin.action(description="Retry failed images…", permissions=["change"])
    def retry_failed_images(
        self, request: HttpRequest, queryset: QuerySet[ProcessingRequest]
    ) -> TemplateResponse | None:
        if not self._confirmed(request):
            return self._retry_confirmation(request, list(queryset))
        counts = self._each(request, queryset, self._retry)
        if counts:
            requests_touched = sum(1 for c in counts if c)
            messages.success(
                request,
                f"Re-queued {plural(sum(counts), 'failed image')} of {plural(requests_touched, 'request')}.",
            )
        return None

    @admin.action(description="Reprocess from scratch…", permissions=["change"])
    def reprocess_requests(
        self, request: HttpRequest, queryset: QuerySet[ProcessingRequest]
    ) -> TemplateResponse | None:
        if request.POST.get("post") != "yes":
            return self._reprocess_confirmation(request, list(queryset))
        counts = self._each(request, queryset, self._reprocess)
        if counts:
            messages.success(
                request, f"Reprocessing {plural(sum(counts), 'image')} of {plural(len(counts), 'request')}."
            )
        return None

    @admin.action(description="Resend the completion webhook…", permissions=["change"])
    def resend_webhooks(self, request: HttpRequest, queryset: QuerySet[ProcessingRequest]) -> TemplateResponse | None:
        if not self._confirmed(request):
            return self._resend_confirmation(request, list(queryset))
        sent = self._each(request, queryset, self._resend)
        if sent:
            messages.success(request, f"Resending the completion webhook of {plural(len(sent), 'request')}.")
        return None

    @admin.action(description="Download the output CSV", permissions=["view"])
    def download_output_csv(
        self, request: HttpRequest, queryset: QuerySet[ProcessingRequest]
    ) -> HttpResponseRedirect | None:
        selected = list(queryset.values_list("pk", flat=True)[:2])
        if len(selected) != 1:
            messages.warning(request, "Select one request to download its output CSV.")
            return None
        return redirect("admin:requests_app_processingrequest_output", selected[0])
