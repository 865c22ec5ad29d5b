"""Recording results: every image leaves `processing` through one of these conditional
UPDATEs, under the claim token of the task that holds it, and counts itself on its request
(or, set aside after a transient error, goes back to `pending` uncounted).

Each is safe to run twice, which is what lets them be tried again when the database drops
the connection in the middle (with_db_retry): a commit whose answer was lost leaves the
second run nothing to change.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from imageproc.engine.compress import CompressResult
from imageproc.pipeline.transient import with_db_retry
from products.models import ImageStatus, ProductImage
from requests_app.models import ProcessingRequest

logger = logging.getLogger(__name__)


ERROR_MESSAGE_MAX = 500


def pending_due(now: datetime) -> Q:
    """Pending images that may be claimed now: not set aside until later."""
    return Q(status=ImageStatus.PENDING) & (Q(retry_at__isnull=True) | Q(retry_at__lte=now))


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
    # Transient errors of its origin so far (the same for every copy of the URL).
    transient_errors: int = 0


def record_done(request_id: Any, token: str, groups: list[Group]) -> None:
    """Mark stored images done and count them, in one short transaction for them all."""
    with_db_retry(lambda: _record_done(request_id, token, groups), what=f"request {request_id}: recording results")
    for group in groups:
        group.result = None  # the bytes are stored: let them go


def _record_done(request_id: Any, token: str, groups: list[Group]) -> None:
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
        if done:
            ProcessingRequest.objects.filter(pk=request_id).update(
                images_done=F("images_done") + done,
                bytes_in=F("bytes_in") + bytes_in,
                bytes_out=F("bytes_out") + bytes_out,
                updated_at=now,
            )


def record_failed(request_id: Any, token: str, image_ids: Sequence[Any], code: str, message: str) -> int:
    """Move images still held under `token` to `failed` and count them."""
    return with_db_retry(
        lambda: _record_failed(request_id, token, image_ids, code, message),
        what=f"request {request_id}: recording a failure",
    )


def _record_failed(request_id: Any, token: str, image_ids: Sequence[Any], code: str, message: str) -> int:
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


def record_set_aside(
    request_id: Any,
    token: str,
    image_ids: Sequence[Any],
    *,
    retry_at: datetime,
    code: str,
    message: str,
    spent: bool,
) -> int:
    """Give images still held under `token` back, to be queued again at `retry_at` (by the
    sweeper): a dependency was briefly down. The claim does not count as an attempt;
    `spent` counts it as one of the origin's FETCH_RETRY_MAX transient errors. The error
    stays on the row, for whoever looks, until the image ends."""
    images = ProductImage.objects.filter(pk__in=image_ids, claim_token=token, status=ImageStatus.PROCESSING)
    fields: dict[str, Any] = {
        "status": ImageStatus.PENDING,
        "claim_token": "",
        "lease_until": None,
        "queued_at": None,
        "retry_at": retry_at,
        "attempts": F("attempts") - 1,
        "error_code": code[:64],
        "error_message": message[:ERROR_MESSAGE_MAX],
    }
    if spent:
        fields["transient_errors"] = F("transient_errors") + 1
    return with_db_retry(lambda: images.update(**fields), what=f"request {request_id}: setting images aside")
