"""Use cases of a processing request: create it from a CSV, retry its failed images,
reprocess it. The API, the admin and the management commands all call these.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from dataclasses import dataclass
from typing import IO, Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone
from django_q.tasks import async_task

from imageproc.engine import csv_io, renditions
from imageproc.engine.naming import source_key
from products.models import ImageOutput, ImageStatus, Product, ProductImage
from requests_app.models import (
    FINISHED_STATUSES,
    OutputFormat,
    ProcessingRequest,
    QualityMode,
    RequestStatus,
)
from requests_app.services.errors import InvalidOptions, RequestNotFinished, TooManyActiveRequests
from requests_app.services.webhook_urls import WebhookUrlInvalid, webhook_url_check

logger = logging.getLogger(__name__)


INGEST_CHUNK = 2000

# The encoders' useful range (imageproc.engine.compress refuses anything else).
QUALITY_MIN, QUALITY_MAX = 1, 95
# The automatic qualities a client may ask for: "auto" is stored and answered as "auto:good"
# (the engine treats them alike), so that one request has one way to say what it asked.
QUALITY_AUTO = "auto"
QUALITY_LEVELS = (QUALITY_AUTO, *QualityMode.values)
QUALITY_MESSAGE = (
    f"Quality must be a whole number from {QUALITY_MIN} to {QUALITY_MAX}. "
    f"An automatic quality is one of {', '.join(QUALITY_LEVELS)}."
)
# ProcessingRequest.webhook_url is a 2048-character column.
WEBHOOK_URL_MAX = 2048

# A request in one of these still holds queue and worker time.
ACTIVE_STATUSES = (RequestStatus.PENDING, RequestStatus.PROCESSING, RequestStatus.FINALIZING)


def _default_quality() -> int:
    # Read when an option set is made, not at import, so that settings overrides apply.
    return int(settings.IMAGE_DEFAULT_QUALITY)


@dataclass(frozen=True)
class RequestOptions:
    """How the images of a request are processed, and where its completion webhook goes.

    Valid by construction: every rule is checked here, whoever builds it (the API, the
    admin's form, process_csv), and InvalidOptions names each refused field with its
    messages. The webhook URL goes through the webhook URL check (the SSRF guard: no private
    addresses, https); the fetcher applies the address guard again at every send.
    """

    # 1..95, or an automatic level (QUALITY_LEVELS; "auto" becomes "auto:good"). None: the
    # settings' IMAGE_DEFAULT_QUALITY, or "auto:good" with output_format "auto" (which picks
    # the format per image at a perceptual target, so it needs an automatic quality).
    quality: int | str | None = None
    output_format: str = OutputFormat.JPEG
    webhook_url: str = ""
    # EXIF Artist and Copyright and the XMP rights go into the outputs; False drops them too.
    keep_copyright: bool = True
    # Rendition sizes (bounding-box edges in pixels): a list of ints, or their text as the
    # API form and the commands take it ("1600,800,200"); normalised to distinct ints,
    # largest first. Empty: one output per image at its own size.
    sizes: tuple[int, ...] | list[int] | str = ()

    def __post_init__(self) -> None:
        errors: dict[str, list[str]] = {}
        try:
            object.__setattr__(self, "sizes", tuple(parse_sizes(self.sizes)))  # frozen: normalised once
        except ValueError as exc:
            errors["sizes"] = [str(exc)]
        quality: object = self.quality
        if quality is None:
            quality = QualityMode.GOOD.value if self.output_format == OutputFormat.AUTO else _default_quality()
        elif quality == QUALITY_AUTO:
            quality = QualityMode.GOOD.value
        object.__setattr__(self, "quality", quality)  # frozen: normalised once
        if isinstance(quality, str) and quality in QualityMode.values:
            pass
        elif isinstance(quality, bool) or not isinstance(quality, int) or not QUALITY_MIN <= quality <= QUALITY_MAX:
            errors["quality"] = [QUALITY_MESSAGE]
        elif self.output_format == OutputFormat.AUTO:
            errors["quality"] = [
                "output_format auto picks the smallest format at a perceptual target: its quality is "
                f"automatic ({', '.join(QUALITY_LEVELS)}), or leave quality out for auto:good."
            ]
        if self.output_format not in OutputFormat.values:
            choices = ", ".join(OutputFormat.values)
            errors["output_format"] = [f"{str(self.output_format)[:20]!r} is not an output format: use {choices}."]
        if not isinstance(self.keep_copyright, bool):
            errors["keep_copyright"] = ["keep_copyright is true or false."]
        url = str(self.webhook_url or "").strip()
        object.__setattr__(self, "webhook_url", url)  # frozen: the one normalisation
        if len(url) > WEBHOOK_URL_MAX:
            errors["webhook_url"] = [f"A webhook URL has at most {WEBHOOK_URL_MAX} characters."]
        elif url:
            try:
                webhook_url_check(url)
            except WebhookUrlInvalid as exc:
                errors["webhook_url"] = [str(exc)]
        if errors:
            raise InvalidOptions(errors)

    @property
    def processing_fields(self) -> dict[str, Any]:
        """How ProcessingRequest stores the processing options: a number in `quality`, or an
        automatic level in `quality_mode` (quality NULL)."""
        automatic = isinstance(self.quality, str)
        return {
            "quality": None if automatic else self.quality,
            "quality_mode": self.quality if automatic else "",
            "output_format": self.output_format,
            "keep_copyright": self.keep_copyright,
        }


def parse_sizes(value: object) -> list[int]:
    """Rendition sizes from a list of ints or of digit strings, or from "1600,800,200";
    distinct, largest first. Raises ValueError with the message a client sees."""
    if value is None or value == "":
        return []
    items: list[object]
    if isinstance(value, str):
        items = [part.strip() for part in value.replace(" ", ",").split(",") if part.strip()]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ValueError("Sizes are a list of whole numbers of pixels, e.g. 1600,800,200.")
    numbers: list[int] = []
    for item in items:
        if isinstance(item, str) and item.isdecimal() and len(item) <= 6:
            item = int(item)
        if isinstance(item, bool) or not isinstance(item, int):
            raise ValueError(f"{str(item)[:20]!r} is not a size: sizes are whole numbers of pixels, e.g. 1600,800,200.")
        numbers.append(item)
    if len(numbers) > renditions.MAX_SIZES:
        raise ValueError(f"At most {renditions.MAX_SIZES} sizes, got {len(numbers)}.")
    for number in numbers:
        if not renditions.SIZE_MIN <= number <= renditions.SIZE_MAX:
            raise ValueError(f"Each size is from {renditions.SIZE_MIN} to {renditions.SIZE_MAX} pixels, got {number}.")
    return renditions.validate_sizes(numbers)


def reprocess_options(
    request: ProcessingRequest,
    *,
    quality: int | str | None = None,
    output_format: str | None = None,
    keep_copyright: bool | None = None,
) -> RequestOptions:
    """The options to reprocess `request` with: its own, with those given replaced (None:
    unchanged). A new output_format "auto" over a numeric quality takes "auto:good", as an
    upload without a quality does. Raises InvalidOptions naming the refused fields. The
    webhook URL is the request's and is not checked again here."""
    fmt = output_format if output_format is not None else request.output_format
    if quality is None:
        quality = request.quality_option
        if fmt == OutputFormat.AUTO and isinstance(quality, int):
            quality = None
    return RequestOptions(
        quality=quality,
        output_format=fmt,
        keep_copyright=request.keep_copyright if keep_copyright is None else keep_copyright,
    )


def csv_limits() -> csv_io.CsvLimits:
    return csv_io.CsvLimits(
        max_bytes=settings.CSV_MAX_BYTES, max_rows=settings.CSV_MAX_ROWS, max_urls_per_row=settings.CSV_MAX_URLS_PER_ROW
    )


def _check_size(csv_file: IO[bytes] | bytes) -> None:
    """Refuse a file over CSV_MAX_BYTES by its known size (an upload's, or bytes') before a
    byte of it is read. The parser counts the bytes it reads anyway: a stream without a
    size (stdin) is refused there, at the first byte over the limit."""
    size = len(csv_file) if isinstance(csv_file, bytes | bytearray | memoryview) else getattr(csv_file, "size", None)
    if isinstance(size, int) and size > settings.CSV_MAX_BYTES:
        raise csv_io.CsvTooLarge(settings.CSV_MAX_BYTES)


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

    Every rule of an upload is checked here, for the API, the admin and process_csv alike:
    the options (RequestOptions checks itself: quality, format, the webhook URL guard), the
    size (csv_io.CsvTooLarge over CSV_MAX_BYTES, before anything is read) and the CSV itself
    (csv_io.CsvInvalid listing its problems; an empty file is one of them).

    Returns (request, created). With an idempotency key already used by this owner, the
    original request comes back and nothing is created (even over the cap below). Raises
    TooManyActiveRequests when the owner already has MAX_ACTIVE_REQUESTS_PER_CLIENT requests
    in progress. Nothing is stored when it raises.
    """
    options = options or RequestOptions()
    _check_size(csv_file)
    if idempotency_key:
        existing = ProcessingRequest.objects.filter(owner=owner, idempotency_key=idempotency_key).first()
        if existing:
            return existing, False
    _check_active_requests(owner)

    request = ProcessingRequest(
        owner=owner,
        original_filename=filename[:255],
        idempotency_key=idempotency_key or None,
        **options.processing_fields,
        webhook_url=options.webhook_url,
        sizes=list(options.sizes),
    )
    try:
        with transaction.atomic():
            # Rows are stored as the parser yields them, INGEST_CHUNK products at a time: a
            # 20 MB file never exists as 200,000 model objects at once. A problem found
            # further down raises here, and the transaction stores nothing. The request row
            # goes in last, with its totals: the foreign keys to it are checked at commit.
            parsed = csv_io.open_csv(csv_file, limits=csv_limits())
            # Its columns and dialect, for an output CSV that fits the shop's spreadsheet.
            request.csv_header = list(parsed.layout.header)
            request.csv_encoding = parsed.layout.dialect.encoding
            request.csv_delimiter = parsed.layout.dialect.delimiter
            rows = parsed.rows
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
            extra_cells=list(row.extra),
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


# What a queued image looks like before its first attempt.
_IMAGE_FRESH_START: dict[str, Any] = {
    "status": ImageStatus.PENDING,
    "attempts": 0,
    "claim_token": "",
    "queued_at": None,
    "lease_until": None,
    "retry_at": None,
    "transient_errors": 0,
    "error_code": "",
    "error_message": "",
    "finished_at": None,
}


# What an image's last compression recorded (records.py), cleared when it is redone.
_NO_COMPRESSION_RECORD: dict[str, Any] = {
    "output_format": "",
    "candidate": "",
    "quality_chosen": None,
    "score": None,
    "encoder": "",
}


def _require_finished(request: ProcessingRequest, action: str) -> None:
    if request.status not in FINISHED_STATUSES:
        raise RequestNotFinished(f"The request is {request.status}; {action} it once it has finished.")


def request_retry_failed(*, request: ProcessingRequest, dry_run: bool = False) -> int:
    """Give the failed images of a finished request a fresh start; return how many.

    Raises RequestNotFinished while the request runs. With `dry_run`, the same checks, and
    the count it would re-queue; nothing changes.
    """
    _require_finished(request, "retry")
    if dry_run:
        return ProductImage.objects.filter(request_id=request.pk, status=ImageStatus.FAILED).count()
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
                # The rate and the ETA of this run count from now, from the images finished
                # now; the checkpoints of the last run would count the retried ones as lost.
                resumed_at=now,
                resumed_finished=F("images_done") + F("images_failed") - reset,
                rate_base_at=None,
                rate_mark_at=None,
            )
            transaction.on_commit(lambda: async_task("imageproc.tasks.dispatch_request", str(request.pk)))
    request.refresh_from_db()
    return reset


def request_reprocess(
    *,
    request: ProcessingRequest,
    options: RequestOptions | None = None,
    dry_run: bool = False,
    sizes: list[int] | tuple[int, ...] | str | None = None,
) -> int:
    """Process every image of a finished request again, from scratch; return how many.

    `sizes` (RequestOptions' rule; InvalidOptions naming `sizes`) replaces the request's
    renditions from now on, an empty list none; None keeps them.

    With `options` (reprocess_options() builds them from the request's own), the images are
    processed with its quality, output_format and keep_copyright from now on; the webhook
    URL stays the request's. Raises RequestNotFinished while the request runs. With
    `dry_run`, the same checks, and the count it would re-queue (every image: the request
    knows its total); nothing changes.
    """
    new_sizes: dict[str, list[int]] = {}
    if sizes is not None:
        try:
            new_sizes["sizes"] = parse_sizes(sizes)
        except ValueError as exc:
            raise InvalidOptions({"sizes": [str(exc)]}) from None
    _require_finished(request, "reprocess")
    if dry_run:
        return request.images_total
    new_settings = options.processing_fields if options is not None else {}
    now = timezone.now()
    with transaction.atomic():
        reset = ProductImage.objects.filter(request_id=request.pk).update(
            **_IMAGE_FRESH_START, output_name="", bytes_in=None, bytes_out=None, **_NO_COMPRESSION_RECORD
        )
        # Every size is made again (a retry keeps those an image has: only the missing are made).
        ImageOutput.objects.filter(request_id=request.pk).delete()
        ProcessingRequest.objects.filter(pk=request.pk, status__in=FINISHED_STATUSES).update(
            **new_settings,
            **new_sizes,
            status=RequestStatus.PENDING,
            images_done=0,
            images_failed=0,
            bytes_in=0,
            bytes_out=0,
            started_at=None,
            completed_at=None,
            updated_at=now,
            resumed_at=None,
            resumed_finished=0,
            rate_base_at=None,
            rate_mark_at=None,
        )
        transaction.on_commit(lambda: async_task("imageproc.tasks.dispatch_request", str(request.pk)))
    request.refresh_from_db()
    return reset
