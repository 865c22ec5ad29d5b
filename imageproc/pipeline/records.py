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

from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from imageproc.engine.compress import CompressResult
from imageproc.pipeline.transient import with_db_retry
from products.models import ImageOutput, ImageStatus, ProductImage
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
    # A request with sizes: the outputs stored so far (those of an earlier attempt too), the
    # uploads still running, and the output of the first size (the image's own fields).
    outputs: list[SizedOutput] = field(default_factory=list)
    uploads_left: int = 0
    # A request with sizes: what the engine made of the first (largest) size, recorded on the
    # image as its one output's record is without sizes (compression_record).
    compression: dict[str, Any] = field(default_factory=dict)
    upload_failed: bool = False
    input_format: str = ""


@dataclass(frozen=True)
class SizedOutput:
    """One stored rendition and the sizes (boxes) it serves: several when the source is
    not larger than them (the source at its own size)."""

    sizes: tuple[int, ...]
    name: str
    width: int
    height: int
    bytes: int
    format: str
    kept_original: bool = False
    store_ms: int = 0

    def serves(self, size: int) -> bool:
        return size in self.sizes


def existing_outputs(image_ids: Sequence[Any], sizes: Sequence[int]) -> dict[int, SizedOutput]:
    """The sizes that every one of these images (copies of one URL) already has an output
    for, from an earlier attempt that stored and recorded them before it died."""
    rows = list(
        ImageOutput.objects.filter(image_id__in=image_ids, size__in=sizes)
        .order_by()
        .values_list("image_id", "size", "name", "width", "height", "bytes", "format", "kept_original")
    )
    holders: dict[int, set[Any]] = {}
    found: dict[int, SizedOutput] = {}
    for image_id, size, name, width, height, nbytes, fmt, kept in rows:
        holders.setdefault(size, set()).add(image_id)
        found[size] = SizedOutput((size,), name, width, height, nbytes, fmt, kept)
    everyone = set(image_ids)
    return {size: output for size, output in found.items() if holders[size] >= everyone}


def record_outputs(request_id: Any, token: str, items: list[tuple[Group, SizedOutput]]) -> None:
    """Record stored renditions as they land, before their image ends: a worker that dies
    between two sizes leaves these, and the next attempt makes only the others."""
    with_db_retry(lambda: _record_outputs(request_id, token, items), what=f"request {request_id}: recording outputs")


def _record_outputs(request_id: Any, token: str, items: list[tuple[Group, SizedOutput]]) -> None:
    ids = [image_id for group, _ in items for image_id in group.ids]
    held = set(
        ProductImage.objects.filter(pk__in=ids, claim_token=token, status=ImageStatus.PROCESSING)
        .order_by()
        .values_list("id", flat=True)
    )
    if not held:
        return
    have = set(ImageOutput.objects.filter(image_id__in=held).order_by().values_list("image_id", "size"))
    rows = [
        ImageOutput(
            request_id=request_id,
            image_id=image_id,
            size=size,
            name=output.name,
            width=output.width,
            height=output.height,
            bytes=output.bytes,
            format=output.format,
            kept_original=output.kept_original,
        )
        for group, output in items
        for image_id in group.ids
        if image_id in held
        for size in output.sizes
        if (image_id, size) not in have
    ]
    try:
        with transaction.atomic():
            ImageOutput.objects.bulk_create(rows)
    except IntegrityError:
        # Another attempt recorded some of them meanwhile (the sweeper gave the image to a
        # second worker while this one lived): keep theirs, add the others one by one.
        for row in rows:
            try:
                with transaction.atomic():
                    row.save(force_insert=True)
            except IntegrityError:
                pass


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
            fields = _output_fields(group)
            changed = ProductImage.objects.filter(
                pk__in=group.ids, claim_token=token, status=ImageStatus.PROCESSING
            ).update(
                status=ImageStatus.DONE,
                finished_at=now,
                bytes_in=group.bytes_in,
                fetch_ms=group.fetch_ms,
                compress_ms=group.compress_ms,
                error_code="",
                error_message="",
                **(compression_record(group.result) if group.result is not None else group.compression),
                **fields,
            )
            done += changed
            bytes_in += changed * group.bytes_in
            bytes_out += changed * fields["bytes_out"]
        if done:
            ProcessingRequest.objects.filter(pk=request_id).update(
                images_done=F("images_done") + done,
                bytes_in=F("bytes_in") + bytes_in,
                bytes_out=F("bytes_out") + bytes_out,
                updated_at=now,
            )


def _output_fields(group: Group) -> dict[str, Any]:
    """The image's own output fields: its one output, or, with sizes, the first size's."""
    if group.outputs:
        main = group.outputs[0]  # the largest box: the process sorts them so
        fields: dict[str, Any] = {
            "output_name": main.name,
            "kept_original": main.kept_original,
            "bytes_out": main.bytes,
            "width": main.width,
            "height": main.height,
            "store_ms": sum(output.store_ms for output in group.outputs),
        }
        if group.input_format:  # unknown when every size was recorded by an earlier attempt
            fields["input_format"] = group.input_format
        return fields
    result = group.result
    assert result is not None
    return {
        "output_name": group.name,
        "kept_original": result.kept_original,
        "bytes_out": len(result.data),
        "width": result.width,
        "height": result.height,
        "input_format": result.input_format,
        "store_ms": group.store_ms,
    }


def compression_record(result: CompressResult | None) -> dict[str, Any]:
    """What the engine made of an image, kept per image (the status answer, the webhook
    payload and the admin show it): the format, the candidate that won, the quality and the
    predicted score of an automatic quality, the encoder."""
    if result is None:
        return {}
    return {
        "output_format": result.output_format,
        "candidate": result.candidate,
        "quality_chosen": result.quality_chosen,
        "score": None if result.score is None else round(result.score, 2),
        "encoder": result.encoder,
    }


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
