"""Admin pages beyond Django's change forms: the request page, the CSV upload page, the live
progress of a request, and staff access to a request's status JSON and output CSV.

The admin calls the same services as the API and the management commands; this module only
reads the database for display and turns forms into service calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from django import forms
from django.conf import settings
from django.contrib.auth.models import User
from django.core.paginator import Paginator
from django.http import HttpRequest, JsonResponse
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from rest_framework.authentication import SessionAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response

from imageproc.engine import csv_io
from imageproc.storage import output_url
from products.models import ImageStatus, Product, ProductImage
from requests_app.api.views import ProcessingRequestViewSet
from requests_app.models import OutputFormat, ProcessingRequest, RequestStatus
from requests_app.services import webhooks
from requests_app.services.requests import ACTIVE_STATUSES, RequestOptions, request_create

if TYPE_CHECKING:
    from django.db.models import QuerySet
    from rest_framework.views import APIView

PRODUCTS_PER_PAGE = 50
FAILED_PER_PAGE = 50
DELIVERIES_SHOWN = 20
TIMES = "\N{MULTIPLICATION SIGN}"
# What an empty cell shows.
NOTHING = "\N{EN DASH}"


# --- Display helpers ------------------------------------------------------------------------


class NoAddOrChange:
    """For admins of rows that only the pipeline or a service writes (images, keys, webhook
    deliveries): they are shown, never added or edited by hand. Works for inlines too."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def input_preview_allowed(image: ProductImage) -> bool:
    """Whether the staff's browser may load an image's input URL: only once the service has
    fetched it. Before that, or after a failure, it may be an address the fetch guard refuses
    (on the staff's own network, a cloud metadata service): linked, never loaded."""
    return image.status == ImageStatus.DONE


def human_bytes(n: int | None) -> str:
    return NOTHING if n is None else str(filesizeformat(n))


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return NOTHING
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def saving_percent(bytes_in: int | None, bytes_out: int | None) -> float | None:
    if not bytes_in or bytes_out is None:
        return None
    return round(100 * (1 - bytes_out / bytes_in), 1)


def status_badge(status: str, label: str) -> SafeString:
    return format_html('<span class="ip-badge ip-badge--{}">{}</span>', status, label)


def progress_bar(obj: ProcessingRequest) -> SafeString:
    """Done (green) and failed (red) segments of the total, from the request's counters."""
    total = obj.images_total or 1
    done = 100 * obj.images_done / total
    failed = 100 * obj.images_failed / total
    failed_text = format_html(' · <span class="ip-failed-text">{} failed</span>', obj.images_failed)
    return format_html(
        '<div class="ip-progress" title="{} done, {} failed, {} images">'
        '<div class="ip-progress__bar"><span class="ip-progress__done" style="width:{}%"></span>'
        '<span class="ip-progress__failed" style="width:{}%"></span></div>'
        '<div class="ip-progress__text">{}/{}{}</div></div>',
        obj.images_done,
        obj.images_failed,
        obj.images_total,
        f"{done:.2f}",
        f"{failed:.2f}",
        obj.images_finished,
        obj.images_total,
        failed_text if obj.images_failed else "",
    )


def _http_url(url: str) -> str:
    # Source URLs were validated at upload (http/https only); this keeps any other scheme
    # out of an href even if a row was written some other way.
    return url if url.startswith(("http://", "https://")) else ""


# --- The live progress of a request -------------------------------------------------------


def request_progress(obj: ProcessingRequest) -> dict[str, Any]:
    """What the request page and `process_csv --wait` show while a request runs."""
    elapsed = obj.duration
    finished = obj.images_finished
    rate = finished / elapsed if elapsed and finished else None
    remaining = obj.images_total - finished
    eta = remaining / rate if rate and remaining > 0 and not obj.is_finished else None
    return {
        "status": obj.status,
        "status_display": obj.get_status_display(),
        "finished": obj.is_finished,
        "images_total": obj.images_total,
        "images_done": obj.images_done,
        "images_failed": obj.images_failed,
        "percent": obj.percent,
        "bytes_in": obj.bytes_in,
        "bytes_out": obj.bytes_out,
        "rate": round(rate, 2) if rate else None,
        "eta_seconds": round(eta) if eta is not None else None,
    }


def progress_json(obj: ProcessingRequest) -> JsonResponse:
    body = request_progress(obj)
    body["progress_html"] = str(progress_bar(obj))
    body["status_html"] = str(status_badge(obj.status, obj.get_status_display()))
    return JsonResponse(body)


# --- The request page ---------------------------------------------------------------------


@dataclass
class ImageView:
    image: ProductImage
    output_url: str | None

    @property
    def input_url(self) -> str:
        return _http_url(self.image.source_url)

    @property
    def input_preview(self) -> bool:
        return input_preview_allowed(self.image)

    @property
    def saving(self) -> float | None:
        return saving_percent(self.image.bytes_in, self.image.bytes_out)

    @property
    def bytes_in(self) -> str:
        return human_bytes(self.image.bytes_in)

    @property
    def bytes_out(self) -> str:
        return human_bytes(self.image.bytes_out)


IMAGE_FIELDS = (
    "id",
    "product_id",
    "position",
    "source_url",
    "status",
    "attempts",
    "error_code",
    "error_message",
    "output_name",
    "kept_original",
    "bytes_in",
    "bytes_out",
    "width",
    "height",
    "input_format",
    "fetch_ms",
    "compress_ms",
    "store_ms",
)


def _image_view(image: ProductImage) -> ImageView:
    done = image.status == ImageStatus.DONE and image.output_name
    return ImageView(image, output_url(image.output_name) if done else None)


def _page_links(page: int, pages: int) -> list[int | None]:
    """Page numbers to show around the current one; None marks a gap."""
    wanted = {1, pages, *range(max(1, page - 2), min(pages, page + 2) + 1)}
    links: list[int | None] = []
    for number in sorted(wanted):
        if links and number - (links[-1] or 0) > 1:
            links.append(None)
        links.append(number)
    return links


def _int(value: str | None, default: int) -> int:
    try:
        return max(1, int(value or default))
    except ValueError:
        return default


def product_page(obj: ProcessingRequest, page: int) -> dict[str, Any]:
    """One page of products in row order with their images: an index range on position
    (no OFFSET, no COUNT: the request knows its product count), and one query for images."""
    pages = max(1, -(-obj.products_total // PRODUCTS_PER_PAGE))
    page = min(page, pages)
    start = (page - 1) * PRODUCTS_PER_PAGE
    products = list(
        Product.objects.filter(request_id=obj.pk, position__gte=start, position__lt=start + PRODUCTS_PER_PAGE)
        .order_by("position")
        .only("id", "position", "serial_number", "product_name")
    )
    images: dict[Any, list[ImageView]] = {p.pk: [] for p in products}
    if products:
        for image in (
            ProductImage.objects.filter(product_id__in=list(images))
            .order_by("product_id", "position")
            .only(*IMAGE_FIELDS)
        ):
            images[image.product_id].append(_image_view(image))
    return {
        "rows": [(product, images[product.pk]) for product in products],
        "page": page,
        "pages": pages,
        "page_links": _page_links(page, pages),
        "first": start + 1 if products else 0,
        "last": start + len(products),
    }


def failed_page(obj: ProcessingRequest, page: int) -> dict[str, Any]:
    """The failed images of a request with their product, 50 a page."""
    queryset = (
        ProductImage.objects.filter(request_id=obj.pk, status=ImageStatus.FAILED)
        .select_related("product")
        .order_by("product__position", "position")
        .only(*IMAGE_FIELDS, "product__position", "product__serial_number", "product__product_name")
    )
    paginator = Paginator(queryset, FAILED_PER_PAGE)
    current = paginator.get_page(page)
    return {
        "failed_images": [_image_view(image) for image in current.object_list],
        "page": current.number,
        "pages": paginator.num_pages,
        "page_links": _page_links(current.number, paginator.num_pages),
        "first": current.start_index(),
        "last": current.end_index(),
        "count": paginator.count,
    }


def webhook_deliveries(obj: ProcessingRequest) -> list[Any]:
    return list(obj.webhook_deliveries.order_by("-created_at")[:DELIVERIES_SHOWN])


def webhook_target(obj: ProcessingRequest) -> str:
    """The URL a completion webhook of this request goes to: its own, else its client's default."""
    if obj.webhook_url:
        return obj.webhook_url
    client = getattr(obj.owner, "api_client", None)
    return str(client.default_webhook_url) if client else ""


def request_page_context(obj: ProcessingRequest, request: HttpRequest) -> dict[str, Any]:
    show_failed = request.GET.get("show") == "failed" and obj.images_failed > 0
    page = _int(request.GET.get("page"), 1)
    listing = failed_page(obj, page) if show_failed else product_page(obj, page)
    progress = request_progress(obj)
    return {
        "original": obj,
        "progress": progress,
        "progress_bar": progress_bar(obj),
        "badge": status_badge(obj.status, obj.get_status_display()),
        "saved": human_bytes(obj.bytes_saved),
        "saved_percent": saving_percent(obj.bytes_in, obj.bytes_out),
        "bytes_in": human_bytes(obj.bytes_in),
        "bytes_out": human_bytes(obj.bytes_out),
        "duration": human_duration(obj.duration),
        "eta": human_duration(progress["eta_seconds"]),
        "show_failed": show_failed,
        "listing": listing,
        "deliveries": webhook_deliveries(obj),
        "webhook_target": webhook_target(obj),
        "can_retry": obj.is_finished and obj.images_failed > 0,
        "can_reprocess": obj.is_finished,
        "poll_url": reverse("admin:requests_app_processingrequest_progress", args=[obj.pk]),
        "status_url": reverse("admin:requests_app_processingrequest_status", args=[obj.pk]),
        "output_url": reverse("admin:requests_app_processingrequest_output", args=[obj.pk]),
    }


# --- Uploading a CSV ----------------------------------------------------------------------


class UploadForm(forms.Form):
    file = forms.FileField(
        label="CSV file",
        help_text="Columns: S. No., Product Name, Input Image Urls (comma-separated URLs). A header row is required.",
    )
    quality = forms.IntegerField(min_value=1, max_value=95, help_text="JPEG/WebP quality, 1 to 95.")
    output_format = forms.ChoiceField(choices=OutputFormat.choices, initial=OutputFormat.JPEG)
    webhook_url = forms.CharField(
        required=False,
        max_length=2048,
        label="Webhook URL",
        help_text="Optional: receives a signed POST when the request has finished.",
        widget=forms.URLInput(attrs={"size": 60, "placeholder": "https://example.com/hooks/images"}),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["quality"].initial = settings.IMAGE_DEFAULT_QUALITY
        # The admin's own <input type=file> styling expects no extra attributes.
        self.fields["file"].widget.attrs["accept"] = ".csv,text/csv"

    def clean_file(self) -> Any:
        upload = self.cleaned_data["file"]
        if upload.size is not None and upload.size > settings.CSV_MAX_BYTES:
            raise forms.ValidationError(str(csv_io.CsvTooLarge(settings.CSV_MAX_BYTES)))
        return upload

    def clean_webhook_url(self) -> str:
        value = str(self.cleaned_data.get("webhook_url") or "").strip()
        if value:
            # The API's check: the SSRF guard at save (private addresses, https).
            try:
                webhooks.webhook_url_check(value)
            except webhooks.WebhookUrlInvalid as exc:
                raise forms.ValidationError(str(exc)) from None
        return value


def upload_csv(form: UploadForm, user: User) -> ProcessingRequest:
    """Start a request for the logged-in user, exactly as POST /csv/upload would."""
    data = form.cleaned_data
    upload = data["file"]
    options = RequestOptions(
        quality=data["quality"], output_format=data["output_format"], webhook_url=data["webhook_url"]
    )
    obj, _ = request_create(owner=user, csv_file=upload, filename=upload.name or "", options=options)
    return obj


# --- Staff access to the client API's answers -----------------------------------------------


class CanViewRequests(BasePermission):
    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        return bool(user and user.is_staff and user.has_perm("requests_app.view_processingrequest"))


class StaffRequestViewSet(ProcessingRequestViewSet):
    """The status JSON and output CSV of any request, for staff. The same code as the client
    API answers with; only the queryset is not limited to one owner."""

    authentication_classes = [SessionAuthentication]
    permission_classes = [CanViewRequests]

    def get_queryset(self) -> QuerySet[ProcessingRequest]:
        return ProcessingRequest.objects.order_by("-created_at")

    def get_throttles(self) -> list[Any]:
        return []

    def status(self, request: Request, pk: str) -> Response:
        response = super().status(request, pk)
        # The body's page links point at the client API, which answers 404 to staff who do
        # not own the request: point them here instead.
        here = request.build_absolute_uri(request.path)
        for key in ("next", "previous"):
            link = response.data.get(key)
            if link:
                response.data[key] = f"{here}?page={link.rsplit('page=', 1)[-1]}"
        return response


WITH_FAILURES = (RequestStatus.FAILED, RequestStatus.COMPLETED_WITH_ERRORS)


def service_overview() -> dict[str, Any]:
    """The strip above the requests list: are workers running, how much is queued, how many
    requests are in flight or ended with failures lately. Both counts are range scans of the
    (status, updated_at) index, whatever the size of the table."""
    from imageproc import health

    since = timezone.now() - timedelta(days=1)
    return {
        "workers": health.workers_check(),
        "active": ProcessingRequest.objects.filter(status__in=ACTIVE_STATUSES).count(),
        # A finished request is not updated after its completion: updated_at is when it ended.
        "failed_today": ProcessingRequest.objects.filter(status__in=WITH_FAILURES, updated_at__gte=since).count(),
    }


def staff_user(request: HttpRequest) -> User:
    # Admin views run behind admin_site.admin_view: the user is an active staff member.
    return cast(User, request.user)
