"""The webhook delivery log in the admin: one row per attempt, read-only."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from requests_app.admin.display import NoAddOrChange
from requests_app.admin.requests import ProcessingRequestAdmin
from requests_app.models import ProcessingRequest, WebhookDelivery

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
    def resend_webhook(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> TemplateResponse | None:
        # The requests' own action: the same confirmation, service call, messages and history.
        request_ids = list(dict.fromkeys(queryset.values_list("request_id", flat=True)))
        requests_admin = cast(ProcessingRequestAdmin, self.admin_site.get_model_admin(ProcessingRequest))
        selected = ProcessingRequest.objects.filter(pk__in=request_ids)
        if request.POST.get("post") != "yes":
            return requests_admin._resend_confirmation(
                request,
                list(selected),
                action="resend_webhook",
                selected=[str(pk) for pk in queryset.values_list("pk", flat=True)],
            )
        return requests_admin.resend_webhooks(request, selected)
