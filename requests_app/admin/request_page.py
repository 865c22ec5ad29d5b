"""What the request page and its live progress show, read through the selectors: the progress
figures, one page of products with their images (or of failed images), the webhook."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, JsonResponse
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.formats import date_format

from requests_app import selectors
from requests_app.admin.display import ImageView, progress_bar, size_change, status_badge
from requests_app.formatting import NOTHING, human_bytes, human_duration
from requests_app.models import ProcessingRequest

PRODUCTS_PER_PAGE = 50
FAILED_PER_PAGE = 50
DELIVERIES_SHOWN = 20


def progress_body(obj: ProcessingRequest) -> dict[str, Any]:
    """The request page's live figures (its progress JSON, polled while the request runs)."""
    progress = selectors.request_progress(request=obj)
    return {
        "status": obj.status,
        "status_display": obj.get_status_display(),
        "finished": obj.is_finished,
        **progress.as_counts(),
        "bytes_in": obj.bytes_in,
        "bytes_out": obj.bytes_out,
        "rate": progress.rate,
        "eta_seconds": progress.eta_seconds,
    }


CARDS_TEMPLATE = "admin/requests_app/processingrequest/cards.html"


def cards_context(obj: ProcessingRequest, progress: dict[str, Any]) -> dict[str, Any]:
    """What the figure cards show (cards.html), on the page and in its progress JSON."""
    return {
        "original": obj,
        "progress": progress,
        "size_change": size_change(obj.bytes_in, obj.bytes_out, absolute=True),
        "bytes_in": human_bytes(obj.bytes_in),
        "bytes_out": human_bytes(obj.bytes_out),
        "duration": human_duration(obj.duration),
    }


def progress_json(obj: ProcessingRequest) -> JsonResponse:
    body = progress_body(obj)
    body["progress_html"] = str(progress_bar(obj))
    body["status_html"] = str(status_badge(obj.status, obj.get_status_display()))
    # The cards and the details that move while it runs: the page replaces them as they are.
    body["cards_html"] = render_to_string(CARDS_TEMPLATE, cards_context(obj, body))
    body["started_html"] = date_format(obj.started_at, "DATETIME_FORMAT") if obj.started_at else NOTHING
    return JsonResponse(body)


def page_links(page: int, pages: int) -> list[int | None]:
    """Page numbers to show around the current one; None marks a gap."""
    wanted = {1, pages, *range(max(1, page - 2), min(pages, page + 2) + 1)}
    links: list[int | None] = []
    for number in sorted(wanted):
        if links and number - (links[-1] or 0) > 1:
            links.append(None)
        links.append(number)
    return links


def _page_number(value: str | None) -> int:
    try:
        return max(1, int(value or 1))
    except ValueError:
        return 1


def product_listing(obj: ProcessingRequest, page: int) -> dict[str, Any]:
    """One page of products in row order with their images; a page past the last shows the last."""
    page = min(page, selectors.page_count(request=obj, per_page=PRODUCTS_PER_PAGE))
    listing = selectors.product_page(request=obj, page=page, per_page=PRODUCTS_PER_PAGE)
    return {
        "rows": [(product, [ImageView(image) for image in images]) for product, images in listing.rows],
        "page": listing.page,
        "pages": listing.pages,
        "page_links": page_links(listing.page, listing.pages),
        "first": listing.first,
        "last": listing.last,
    }


def failed_listing(obj: ProcessingRequest, page: int) -> dict[str, Any]:
    """The failed images of a request with their product, one page of them."""
    current = selectors.failed_images(request=obj, page=page, per_page=FAILED_PER_PAGE)
    pages = current.paginator.num_pages
    return {
        "failed_images": [ImageView(image) for image in current.object_list],
        "page": current.number,
        "pages": pages,
        "page_links": page_links(current.number, pages),
        "first": current.start_index(),
        "last": current.end_index(),
        "count": current.paginator.count,
    }


def webhook_target(obj: ProcessingRequest) -> str:
    """The URL a completion webhook of this request goes to: its own, else its client's default."""
    if obj.webhook_url:
        return obj.webhook_url
    client = getattr(obj.owner, "api_client", None)
    return str(client.default_webhook_url) if client else ""


def request_page_context(obj: ProcessingRequest, request: HttpRequest) -> dict[str, Any]:
    show_failed = request.GET.get("show") == "failed" and obj.images_failed > 0
    page = _page_number(request.GET.get("page"))
    progress = progress_body(obj)
    return {
        "original": obj,
        "progress": progress,
        "progress_bar": progress_bar(obj),
        "badge": status_badge(obj.status, obj.get_status_display()),
        **cards_context(obj, progress),
        "eta": human_duration(progress["eta_seconds"]),
        "show_failed": show_failed,
        "listing": failed_listing(obj, page) if show_failed else product_listing(obj, page),
        "deliveries": list(obj.webhook_deliveries.order_by("-created_at")[:DELIVERIES_SHOWN]),
        "webhook_target": webhook_target(obj),
        "can_retry": obj.is_finished and obj.images_failed > 0,
        "can_reprocess": obj.is_finished,
        "poll_url": reverse("admin:requests_app_processingrequest_progress", args=[obj.pk]),
        "status_url": reverse("admin:requests_app_processingrequest_status", args=[obj.pk]),
        "output_url": reverse("admin:requests_app_processingrequest_output", args=[obj.pk]),
    }
