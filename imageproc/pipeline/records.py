"""Recording results: every image leaves `processing` through one of these conditional
UPDATEs, under the claim token of the task that holds it, and counts itself on its request.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from imageproc.engine.compress import CompressResult
from products.models import ImageStatus, ProductImage
from requests_app.models import ProcessingRequest

logger = logging.getLogger(__name__)


ERROR_MESSAGE_MAX = 500


@dataclass
class Group:
    """All images of one batch that share one source URL."""

    url: str
    key: str
    ids: list[Any] = field(default_factory=list)
    bytes_in: int = 0
    result: CompressResult | None = None
    fetch_ms: int = 0
    compress_ms: int = 0
    store_ms: int = 0
    name: str = ""


def record_done(request_id: Any, token: str, groups: list[Group]) -> None:
    """Mark stored images done and count them, in one short transaction for them all."""
    now = timezone.now()
    done = bytes_in = bytes_out = 0
    with transaction.atomic():
        for group in groups:
            result = group.result
            assert result is not None
            changed = ProductImage.objects.filter(
                pk__in=group.ids, claim_token=token, status=ImageStatus.PROCESSING
            ).update(
                status=ImageStatus.DONE,
                finished_at=now,
                output_name=group.name,
                kept_original=result.kept_original,
                bytes_in=group.bytes_in,
                bytes_out=len(result.data),
                width=result.width,
                height=result.height,
                input_format=result.input_format,
                fetch_ms=group.fetch_ms,
                compress_ms=group.compress_ms,
                store_ms=group.store_ms,
                error_code="",
                error_message="",
            )
            done += changed
            bytes_in += changed * group.bytes_in
            bytes_out += changed * len(result.data)
            group.result = None  # the bytes are stored: let them go
        if done:
            ProcessingRequest.objects.filter(pk=request_id).update(
                images_done=F("images_done") + done,
                bytes_in=F("bytes_in") + bytes_in,
                bytes_out=F("bytes_out") + bytes_out,
                updated_at=now,
            )


def record_failed(request_id: Any, token: str, image_ids: Sequence[Any], code: str, message: str) -> int:
    """Move images still held under `token` to `failed` and count them."""
    now = timezone.now()
    images = ProductImage.objects.filter(pk__in=image_ids, claim_token=token, status=ImageStatus.PROCESSING)
    with transaction.atomic():
        changed = images.update(
            status=ImageStatus.FAILED,
            finished_at=now,
            error_code=code[:64],
            error_message=message[:ERROR_MESSAGE_MAX],
        )
        if changed:
            ProcessingRequest.objects.filter(pk=request_id).update(
                images_failed=F("images_failed") + changed, updated_at=now
            )
    return changed
