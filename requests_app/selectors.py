"""Reads: every query that the API, the admin, the commands and the webhook payload share
lives here, once (HackSoft's selectors pattern). Nothing here writes.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from imageproc.storage import output_url
from products.models import ImageStatus, Product, ProductImage
from requests_app.models import (
    ProcessingRequest,
)

logger = logging.getLogger(__name__)


OUTPUT_CHUNK = 1000
# Products parsed, built and inserted at a time by request_create.


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
