"""Reads: every query that the API, the admin, the commands and the webhook payload share
lives here, once (HackSoft's selectors pattern). Nothing here writes.

Products are read by an index range on `position` (no OFFSET, no COUNT: a request knows
its product count), and the images of a page of products in one more query.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.core.paginator import Page, Paginator
from django.db.models import Count
from django.utils import timezone

from imageproc.engine import csv_io
from imageproc.storage import output_url
from products.models import ImageOutput, ImageStatus, Product, ProductImage
from requests_app.models import ProcessingRequest

# Products read at a time when the whole output CSV is written.
OUTPUT_CHUNK = 1000

# What the API, the admin and the commands show of an image.
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
    "output_format",
    "candidate",
    "quality_chosen",
    "score",
    "encoder",
    "fetch_ms",
    "compress_ms",
    "store_ms",
)


# What the output CSV needs of an image.
OUTPUT_FIELDS = ("id", "product_id", "position", "source_url", "status", "output_name")


class PageOutOfRange(LookupError):
    """A page number past the last page (or below 1)."""


# --- Progress ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """A request's progress from its counters, as the status API, the admin, the commands and
    the webhook payload report it."""

    images_total: int
    images_done: int
    images_failed: int
    percent: float
    # Images finished per second lately (request_rate), or since the request started; None
    # before the first one.
    rate: float | None
    # Seconds until every image has finished at that rate; None until ETA_MIN_SHARE of the
    # images have finished, and once none is left.
    eta_seconds: int | None

    def as_counts(self) -> dict[str, Any]:
        """The four counters of the API's `progress` object and the webhook payload."""
        return {
            "images_total": self.images_total,
            "images_done": self.images_done,
            "images_failed": self.images_failed,
            "percent": self.percent,
        }


# The ETA needs this share of a request's images finished (and one at least) to say anything.
ETA_MIN_SHARE = 0.05
# A checkpoint younger than this measures too short a stretch: the rate since the start is used.
ETA_MIN_WINDOW = 5.0


def request_rate(*, request: ProcessingRequest, now: datetime | None = None) -> float | None:
    """Images finished per second lately: since the base checkpoint the workers keep 10-20 s
    behind (imageproc.pipeline.fairness), so the rate is the request's at its current share
    of the workers (it halves within 20 s when another client arrives); before the first
    checkpoints, since the request started."""
    now = now or timezone.now()
    # The run: since the request started, or since a retry resumed it (the images finished
    # before do not count, nor the time between).
    resumed_finished = request.resumed_finished or 0  # None in a document older than the field
    finished = request.images_finished - resumed_finished
    start = request.resumed_at or request.started_at
    elapsed = ((request.completed_at or now) - start).total_seconds() if start else None
    if request.is_finished:
        return finished / elapsed if elapsed and finished > 0 else None
    for at, then in (
        (request.rate_base_at, request.rate_base_finished),
        (request.rate_mark_at, request.rate_mark_finished),
    ):
        # A checkpoint past the count: the request was reprocessed since.
        if at is not None and then <= request.images_finished and (now - at).total_seconds() >= ETA_MIN_WINDOW:
            return (request.images_finished - then) / (now - at).total_seconds()
    return finished / elapsed if elapsed and finished > 0 else None


def request_progress(*, request: ProcessingRequest) -> Progress:
    finished = request.images_finished
    rate = request_rate(request=request)
    remaining = request.images_total - finished
    # Of this run's images (a retry's are the failed ones only).
    resumed_finished = request.resumed_finished or 0
    enough = finished - resumed_finished >= max(1, ETA_MIN_SHARE * (request.images_total - resumed_finished))
    eta = remaining / rate if rate and enough and remaining > 0 and not request.is_finished else None
    return Progress(
        images_total=request.images_total,
        images_done=request.images_done,
        images_failed=request.images_failed,
        percent=request.percent,
        rate=round(rate, 2) if rate else None,
        # Never 0 while an image is left (the output CSV is still to be written).
        eta_seconds=max(1, round(eta)) if eta is not None else None,
    )


# --- Products and their images -----------------------------------------------------------------


def _with_output_url(image: ProductImage) -> ProductImage:
    done = image.status == ImageStatus.DONE and image.output_name
    image.output_url = output_url(image.output_name) if done else None
    return image


def images_by_product(
    product_ids: list[Any], *, fields: tuple[str, ...] = IMAGE_FIELDS, sizes: bool = False
) -> dict[Any, list[ProductImage]]:
    """The images of some products in position order, each with `output_url` (absolute, or
    None where the image is not done); only `fields` are read. With `sizes` (a request that
    asked for renditions), each image's `sized_outputs` too: one per size, largest first,
    each with its absolute `url` (an image not done has none)."""
    grouped: dict[Any, list[ProductImage]] = {product_id: [] for product_id in product_ids}
    if not product_ids:
        return grouped
    images = list(
        ProductImage.objects.filter(product_id__in=product_ids).order_by("product_id", "position").only(*fields)
    )
    outputs = outputs_by_image([image.pk for image in images if image.status == ImageStatus.DONE]) if sizes else {}
    for image in images:
        if sizes:
            image.sized_outputs = outputs.get(image.pk, [])
        grouped[image.product_id].append(_with_output_url(image))
    return grouped


def outputs_by_image(image_ids: list[Any]) -> dict[Any, list[ImageOutput]]:
    """The renditions of some images, largest size first, each with its absolute `url`."""
    grouped: dict[Any, list[ImageOutput]] = {}
    if not image_ids:
        return grouped
    for output in ImageOutput.objects.filter(image_id__in=image_ids).order_by("image_id", "-size"):
        output.url = output_url(output.name)
        grouped.setdefault(output.image_id, []).append(output)
    return grouped


def page_count(*, request: ProcessingRequest, per_page: int) -> int:
    return max(1, -(-request.products_total // per_page))


@dataclass(frozen=True)
class ProductPage:
    rows: list[tuple[Product, list[ProductImage]]]
    page: int
    pages: int
    # 1-based row numbers of the first and last product shown (0, 0 when there is none).
    first: int
    last: int


def product_page(*, request: ProcessingRequest, page: int, per_page: int) -> ProductPage:
    """One page of products in row order, each with its images. Raises PageOutOfRange."""
    pages = page_count(request=request, per_page=per_page)
    if page < 1 or page > pages:
        raise PageOutOfRange(page)
    start = (page - 1) * per_page
    products = list(
        Product.objects.filter(request_id=request.pk, position__gte=start, position__lt=start + per_page)
        .order_by("position")
        .only("id", "position", "serial_number", "product_name")
    )
    images = images_by_product([product.pk for product in products], sizes=bool(request.sizes))
    return ProductPage(
        rows=[(product, images[product.pk]) for product in products],
        page=page,
        pages=pages,
        first=start + 1 if products else 0,
        last=start + len(products),
    )


def product_status(images: list[ProductImage]) -> str:
    """A product's state from its images': theirs when they agree, else `partial` once all
    have ended, else `processing`."""
    states = {image.status for image in images}
    if len(states) == 1:
        return states.pop()
    if states <= {ImageStatus.DONE, ImageStatus.FAILED}:
        return "partial"
    return "processing"


def failed_images(*, request: ProcessingRequest, page: int, per_page: int) -> Page[ProductImage]:
    """The failed images of a request in row order, with their product, one page of them
    (the last page for a number past it)."""
    queryset = (
        ProductImage.objects.filter(request_id=request.pk, status=ImageStatus.FAILED)
        .select_related("product")
        .order_by("product__position", "position")
        .only(*IMAGE_FIELDS, "product__position", "product__serial_number", "product__product_name")
    )
    current = Paginator(queryset, per_page).get_page(page)
    for image in current.object_list:
        _with_output_url(image)
    return current


def failure_counts(*, request: ProcessingRequest) -> Counter[str]:
    """How many images failed with each error code."""
    failed = ProductImage.objects.filter(request_id=request.pk, status=ImageStatus.FAILED)
    return Counter(
        dict(failed.order_by().values_list("error_code").annotate(n=Count("id")).values_list("error_code", "n"))
    )


def request_output_rows(
    *, request: ProcessingRequest
) -> Iterator[tuple[str, str, list[str], list[str | None], list[str], list[list[str | None]]]]:
    """Rows of the output CSV in input order, URL lists positionally aligned: None where an
    image is not done; then the cells of the upload's other columns; last, for a request
    with sizes, one such URL list per further size (the first size's are the main list).
    Reads products in chunks by position (an index range, no OFFSET)."""
    further = list(request.sizes or [])[1:]
    for start in range(0, request.products_total, OUTPUT_CHUNK):
        products = list(
            Product.objects.filter(request_id=request.pk, position__gte=start, position__lt=start + OUTPUT_CHUNK)
            .order_by("position")
            .values_list("id", "serial_number", "product_name", "extra_cells")
        )
        images = images_by_product([p[0] for p in products], fields=OUTPUT_FIELDS, sizes=bool(further))
        for product_id, serial, name, extra in products:
            own = images[product_id]
            yield (
                serial,
                name,
                [image.source_url for image in own],
                [image.output_url for image in own],
                list(extra or []),
                [[_size_url(image, size) for image in own] for size in further],
            )


def _size_url(image: ProductImage, size: int) -> str | None:
    for output in image.sized_outputs or ():
        if output.size == size:
            return output.url
    return None


# The dialects the output CSV is offered in (GET /csv/output?dialect=, process_csv --dialect).
DIALECT_ORIGINAL = "original"  # the upload's encoding (a byte-order mark too) and delimiter
DIALECT_STANDARD = "standard"  # UTF-8 without a byte-order mark, commas
OUTPUT_DIALECTS = (DIALECT_ORIGINAL, DIALECT_STANDARD)


@dataclass(frozen=True)
class OutputCsv:
    chunks: Iterator[bytes]
    content_type: str


def request_output_csv(*, request: ProcessingRequest, dialect: str = DIALECT_ORIGINAL, min_chunk: int = 0) -> OutputCsv:
    """The output CSV as bytes, the one rendering that GET /csv/output, process_csv --output
    and the stored output CSV share: every column of the upload in its place and
    `Output Image Urls` appended, in the upload's dialect (`original`) or in UTF-8 with
    commas (`standard`)."""
    chosen = request.csv_dialect if dialect == DIALECT_ORIGINAL else csv_io.STANDARD_DIALECT
    text = csv_io.render_output(
        request_output_rows(request=request),
        header=request.csv_header or (),
        further_sizes=list(request.sizes or [])[1:],
        delimiter=chosen.delimiter,
        min_chunk=min_chunk,
    )
    return OutputCsv(csv_io.encode_output(text, chosen), f"text/csv; charset={chosen.charset}")
