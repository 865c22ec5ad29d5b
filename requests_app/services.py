"""Use cases of a processing request. The API, the admin and the management commands all
call these functions; none of them re-implements one."""

from __future__ import annotations

import itertools
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone
from django_q.tasks import async_task

from imageproc.storage import csv_output_name, output_url, source_key
from products.models import ImageStatus, Product, ProductImage
from requests_app import csv_io
from requests_app.models import (
    FINISHED_STATUSES,
    ApiClient,
    ApiKey,
    OutputFormat,
    ProcessingRequest,
    RequestStatus,
)

logger = logging.getLogger(__name__)

OUTPUT_CHUNK = 1000
# Products parsed, built and inserted at a time by request_create.
INGEST_CHUNK = 2000


class ServiceError(Exception):
    """A domain error; the API turns it into an HTTP answer (requests_app.api)."""

    status_code = 400
    code = "error"


class RequestNotFinished(ServiceError):
    status_code = 409
    code = "not_finished"


class TooManyActiveRequests(ServiceError):
    status_code = 429
    code = "too_many_active_requests"


# A request in one of these still holds queue and worker time.
ACTIVE_STATUSES = (RequestStatus.PENDING, RequestStatus.PROCESSING, RequestStatus.FINALIZING)


@dataclass(frozen=True)
class RequestOptions:
    quality: int = 50
    output_format: str = OutputFormat.JPEG
    webhook_url: str = ""


def csv_limits() -> csv_io.CsvLimits:
    return csv_io.CsvLimits(
        max_bytes=settings.CSV_MAX_BYTES, max_rows=settings.CSV_MAX_ROWS, max_urls_per_row=settings.CSV_MAX_URLS_PER_ROW
    )


def request_create(
    *,
    owner: User,
    csv_file: IO[bytes] | bytes,
    filename: str = "",
    options: RequestOptions | None = None,
    idempotency_key: str | None = None,
) -> tuple[ProcessingRequest, bool]:
    """Validate a CSV, store its request, products and images in one short transaction,
    and queue the work once that transaction has committed.

    Returns (request, created). With an idempotency key already used by this owner, the
    original request comes back and nothing is created (even over the cap below). Raises
    csv_io.CsvInvalid or csv_io.CsvTooLarge for a file that cannot be accepted, and
    TooManyActiveRequests when the owner already has MAX_ACTIVE_REQUESTS_PER_CLIENT requests
    in progress; nothing is stored then.
    """
    options = options or RequestOptions(quality=settings.IMAGE_DEFAULT_QUALITY)
    if idempotency_key:
        existing = ProcessingRequest.objects.filter(owner=owner, idempotency_key=idempotency_key).first()
        if existing:
            return existing, False
    _check_active_requests(owner)

    request = ProcessingRequest(
        owner=owner,
        original_filename=filename[:255],
        idempotency_key=idempotency_key or None,
        quality=options.quality,
        output_format=options.output_format,
        webhook_url=options.webhook_url,
    )
    try:
        with transaction.atomic():
            # Rows are stored as the parser yields them, INGEST_CHUNK products at a time: a
            # 20 MB file never exists as 200,000 model objects at once. A problem found
            # further down raises here, and the transaction stores nothing. The request row
            # goes in last, with its totals: the foreign keys to it are checked at commit.
            rows = csv_io.iter_parse(csv_file, limits=csv_limits())
            products_total = images_total = 0
            while chunk := list(itertools.islice(rows, INGEST_CHUNK)):
                images_total += _store_rows(request, chunk, first_position=products_total)
                products_total += len(chunk)
            request.products_total = products_total
            request.images_total = images_total
            request.save(force_insert=True)
            transaction.on_commit(lambda: async_task("imageproc.tasks.dispatch_request", str(request.pk)))
    except IntegrityError:
        _discard_partial_upload(request)
        if idempotency_key:
            # Two uploads raced with the same key: the other one won.
            existing = ProcessingRequest.objects.filter(owner=owner, idempotency_key=idempotency_key).first()
            if existing:
                return existing, False
        raise
    except Exception:
        _discard_partial_upload(request)
        raise
    logger.info("request %s created: %d products, %d images", request.pk, products_total, images_total)
    return request, True


def _discard_partial_upload(request: ProcessingRequest) -> None:
    """On SQL the rolled-back transaction already removed the rows of a rejected upload.
    MongoDB's atomic() is a no-op: delete what was inserted before the problem was found,
    or those images would sit `pending` under a request that does not exist."""
    if connection.features.supports_transactions:
        return
    ProductImage.objects.filter(request_id=request.pk).delete()
    Product.objects.filter(request_id=request.pk).delete()


def _store_rows(request: ProcessingRequest, rows: list[csv_io.ParsedRow], *, first_position: int) -> int:
    """Insert the products and images of some CSV rows in bulk; return the image count."""
    products: list[Product] = []
    images: list[ProductImage] = []
    keys: dict[str, str] = {}
    for position, row in enumerate(rows, start=first_position):
        product = Product(
            id=uuid.uuid4(),
            request=request,
            position=position,
            serial_number=row.serial_number,
            product_name=row.product_name,
        )
        products.append(product)
        for index, url in enumerate(row.urls):
            key = keys.get(url) or keys.setdefault(url, source_key(url))
            images.append(
                ProductImage(
                    id=uuid.uuid4(), request=request, product=product, position=index, source_url=url, source_key=key
                )
            )
    Product.objects.bulk_create(products, batch_size=2000)
    ProductImage.objects.bulk_create(images, batch_size=2000)
    return len(images)


def _check_active_requests(owner: User) -> None:
    """One client cannot fill the queue for everyone: over MAX_ACTIVE_REQUESTS_PER_CLIENT
    requests in progress, a new upload is refused (429) before its CSV is even parsed.
    Count-then-insert is not atomic, so two simultaneous uploads may overshoot by one; the
    cap is about fairness, not an exact quota."""
    limit = settings.MAX_ACTIVE_REQUESTS_PER_CLIENT
    active = ProcessingRequest.objects.filter(owner=owner, status__in=ACTIVE_STATUSES).count()
    if active >= limit:
        raise TooManyActiveRequests(
            f"{active} of your requests are still in progress and the limit is {limit}; "
            "upload again once one of them has finished."
        )


def request_finalize(*, request_id: Any) -> str | None:
    """Write the output CSV and set the final status. Idempotent: it acts only on a
    request in `finalizing`, which exactly one task claimed (imageproc.services)."""
    request = ProcessingRequest.objects.filter(pk=request_id, status=RequestStatus.FINALIZING).first()
    if request is None:
        return None
    name = csv_output_name(request.pk)
    content = "".join(csv_io.render_output(request_output_rows(request=request))).encode("utf-8")
    csv_file = ContentFile(content, name=name)
    csv_file.content_type = "text/csv; charset=utf-8"  # type: ignore[attr-defined]
    saved = default_storage.save(name, csv_file)
    final = request.final_status()
    now = timezone.now()
    changed = ProcessingRequest.objects.filter(pk=request.pk, status=RequestStatus.FINALIZING).update(
        status=final, completed_at=now, updated_at=now, output_csv_name=saved
    )
    if changed:
        logger.info("request %s finished: %s", request.pk, final)
        request_finished(request_id=request.pk)
    return final


def request_finished(*, request_id: Any) -> None:
    """What follows a request's end (in the worker that finalised it): its completion
    webhook. This records the event and sends it from a thread of the worker, never waiting
    for the receiver. If it fails, the sweeper creates the event later
    (requests_app.webhooks.webhook_sweep), so the request's end is not undone."""
    from requests_app import webhooks  # webhooks imports this module

    try:
        webhooks.webhook_event_create(request_id=request_id, send_here=True)
    except Exception:
        logger.exception("request %s: could not create its webhook event; the sweeper will", request_id)


def request_output_rows(*, request: ProcessingRequest) -> Iterator[tuple[str, str, list[str], list[str | None]]]:
    """Rows of the output CSV in input order, URL lists positionally aligned: None where an
    image is not done. Reads products in chunks by position (an index range, no OFFSET)."""
    for start in range(0, request.products_total, OUTPUT_CHUNK):
        products = list(
            Product.objects.filter(request_id=request.pk, position__gte=start, position__lt=start + OUTPUT_CHUNK)
            .order_by("position")
            .values_list("id", "serial_number", "product_name")
        )
        images = images_by_product([p[0] for p in products])
        for product_id, serial, name in products:
            own = images.get(product_id, [])
            yield (
                serial,
                name,
                [image["source_url"] for image in own],
                [image["output_url"] for image in own],
            )


def images_by_product(product_ids: list[Any]) -> dict[Any, list[dict[str, Any]]]:
    """The images of some products in position order, with absolute output URLs."""
    grouped: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    rows = (
        ProductImage.objects.filter(product_id__in=product_ids)
        .order_by("product_id", "position")
        .values("product_id", "source_url", "status", "output_name", "error_code", "error_message")
    )
    for row in rows:
        image: dict[str, Any] = dict(row)
        done = image["status"] == ImageStatus.DONE and image["output_name"]
        image["output_url"] = output_url(image["output_name"]) if done else None
        grouped[image["product_id"]].append(image)
    return grouped


# What a queued image looks like before its first attempt.
_IMAGE_FRESH_START: dict[str, Any] = {
    "status": ImageStatus.PENDING,
    "attempts": 0,
    "claim_token": "",
    "queued_at": None,
    "error_code": "",
    "error_message": "",
    "finished_at": None,
}


def _require_finished(request: ProcessingRequest, action: str) -> None:
    if request.status not in FINISHED_STATUSES:
        raise RequestNotFinished(f"The request is {request.status}; {action} it once it has finished.")


def request_retry_failed(*, request: ProcessingRequest) -> int:
    """Give the failed images of a finished request a fresh start; return how many."""
    _require_finished(request, "retry")
    now = timezone.now()
    with transaction.atomic():
        reset = ProductImage.objects.filter(request_id=request.pk, status=ImageStatus.FAILED).update(
            **_IMAGE_FRESH_START
        )
        if reset:
            ProcessingRequest.objects.filter(pk=request.pk, status__in=FINISHED_STATUSES).update(
                status=RequestStatus.PROCESSING,
                images_failed=F("images_failed") - reset,
                completed_at=None,
                updated_at=now,
            )
            transaction.on_commit(lambda: async_task("imageproc.tasks.dispatch_request", str(request.pk)))
    request.refresh_from_db()
    return reset


def request_reprocess(*, request: ProcessingRequest) -> int:
    """Process every image of a finished request again, from scratch."""
    _require_finished(request, "reprocess")
    now = timezone.now()
    with transaction.atomic():
        reset = ProductImage.objects.filter(request_id=request.pk).update(
            **_IMAGE_FRESH_START, output_name="", bytes_in=None, bytes_out=None
        )
        ProcessingRequest.objects.filter(pk=request.pk, status__in=FINISHED_STATUSES).update(
            status=RequestStatus.PENDING,
            images_done=0,
            images_failed=0,
            bytes_in=0,
            bytes_out=0,
            started_at=None,
            completed_at=None,
            updated_at=now,
        )
        transaction.on_commit(lambda: async_task("imageproc.tasks.dispatch_request", str(request.pk)))
    request.refresh_from_db()
    return reset


# --- API clients ----------------------------------------------------------------------------


def api_client_create(*, name: str) -> tuple[ApiClient, bool]:
    """The client called `name` (a user), created if missing."""
    user, _ = get_user_model().objects.get_or_create(username=name)
    client, created = ApiClient.objects.get_or_create(user=user)
    return client, created


def api_key_create(*, client: ApiClient) -> str:
    """A new key for the client. The raw key is returned once and never stored."""
    raw, prefix = ApiKey.generate()
    ApiKey.objects.create(client=client, prefix=prefix, key_hash=ApiKey.hash(raw))
    return raw


def api_key_revoke(*, prefix: str) -> ApiKey | None:
    key = ApiKey.objects.filter(prefix=prefix).first()
    if key and key.revoked_at is None:
        ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
        key.refresh_from_db()
    return key


def api_client_enable_webhooks(*, client: ApiClient) -> bool:
    """Deliver the client's webhooks again after a 410 disabled them (the admin's switch; a
    resend does the same). Returns whether they were disabled."""
    enabled = ApiClient.objects.filter(pk=client.pk, webhook_disabled_at__isnull=False).update(
        webhook_disabled_at=None, webhook_disabled_reason=""
    )
    client.webhook_disabled_at, client.webhook_disabled_reason = None, ""
    return bool(enabled)
