"""The processing engine: dispatching batches, processing them, and sweeping what crashed.

The database is the source of truth and the queue only a trigger. Every step is a
conditional UPDATE that checks how many rows it changed, so a task delivered twice, or a
sweeper re-queueing work a live worker still holds, changes nothing twice.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cache
from typing import Any

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Count, F, Q
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.tasks import async_task

from imageproc.compress import CompressOptions, CompressResult, ImageRejected, compress
from imageproc.fetch import FetchError, FetchPolicy, FetchResult, fetch_image, parse_networks
from imageproc.storage import image_output_name
from products.models import ImageStatus, ProductImage
from requests_app.models import ProcessingRequest, RequestStatus

logger = logging.getLogger(__name__)

ERROR_MESSAGE_MAX = 500


@cache
def fetch_policy() -> FetchPolicy:
    return FetchPolicy(
        allowed_networks=parse_networks(settings.FETCH_ALLOWED_NETWORKS),
        connect_timeout=settings.FETCH_CONNECT_TIMEOUT,
        total_timeout=settings.FETCH_TOTAL_TIMEOUT,
        max_bytes=settings.IMAGE_MAX_BYTES,
        max_redirects=settings.FETCH_MAX_REDIRECTS,
        user_agent=settings.FETCH_USER_AGENT,
    )


_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _io_pool() -> ThreadPoolExecutor:
    """One I/O pool per worker process, created lazily after django-q2 forks the worker,
    so that kept-alive connections are reused from one batch to the next."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=settings.IMAGE_IO_THREADS, thread_name_prefix="imageio")
        return _pool


# --- Dispatch -----------------------------------------------------------------------------


def batches_by_url(images: Iterable[tuple[Any, str]], *, batch_size: int) -> list[list[str]]:
    """Split (image id, source key) pairs into batches of at most `batch_size` distinct URLs.
    Every copy of one URL lands in the same batch, so it is fetched and compressed once."""
    by_key: dict[str, list[str]] = defaultdict(list)
    for image_id, key in images:
        by_key[key].append(str(image_id))
    batches: list[list[str]] = []
    current: list[str] = []
    distinct = 0
    for ids in by_key.values():
        if distinct == batch_size:
            batches.append(current)
            current, distinct = [], 0
        current.extend(ids)
        distinct += 1
    if current:
        batches.append(current)
    return batches


def images_dispatch(*, request_id: Any, only_unqueued: bool = False, batch_size: int | None = None) -> int:
    """Queue every pending image of a request in batches; return the number of tasks.

    The upload queues one dispatch task rather than thousands of batch tasks, so that the
    web request stays short whatever the size of the CSV.
    """
    pending = ProductImage.objects.filter(request_id=request_id, status=ImageStatus.PENDING)
    if only_unqueued:
        pending = pending.filter(queued_at__isnull=True)
    rows = list(pending.order_by("source_key").values_list("id", "source_key"))
    if not rows:
        return 0
    ProductImage.objects.filter(pk__in=[r[0] for r in rows], status=ImageStatus.PENDING).update(
        queued_at=timezone.now()
    )
    batches = batches_by_url(rows, batch_size=batch_size or settings.IMAGE_BATCH_SIZE)
    for ids in batches:
        async_task("imageproc.tasks.process_images", str(request_id), ids, group=str(request_id))
    return len(batches)


# --- Processing ---------------------------------------------------------------------------


@dataclass
class _Group:
    """All images of one batch that share one source URL."""

    url: str
    key: str
    ids: list[Any] = field(default_factory=list)
    bytes_in: int = 0
    result: CompressResult | None = None
    fetch_ms: int = 0
    compress_ms: int = 0
    store_ms: int = 0


def _ms(start: float) -> int:
    return int((time.perf_counter() - start) * 1000)


def _timed_fetch(url: str, policy: FetchPolicy) -> tuple[FetchResult, int]:
    start = time.perf_counter()
    return fetch_image(url, policy=policy), _ms(start)


def _timed_store(name: str, data: bytes, content_type: str) -> tuple[str, int]:
    start = time.perf_counter()
    content = ContentFile(data, name=name)
    content.content_type = content_type  # type: ignore[attr-defined]  # read by the S3 backend
    saved = default_storage.save(name, content)
    return saved, _ms(start)


def image_process(*, request_id: Any, image_ids: Sequence[Any]) -> None:
    """Process one batch: claim, fetch concurrently, compress here, store concurrently,
    record each result as it lands, then try to claim the request's finalisation."""
    token = uuid.uuid4().hex
    now = timezone.now()
    claimed = ProductImage.objects.filter(pk__in=image_ids, status=ImageStatus.PENDING).update(
        status=ImageStatus.PROCESSING, claim_token=token, claimed_at=now, attempts=F("attempts") + 1
    )
    if not claimed:
        # Delivered twice, or the sweeper re-queued what another worker already holds.
        request_try_finalize(request_id=request_id)
        return
    ProcessingRequest.objects.filter(pk=request_id, status=RequestStatus.PENDING).update(
        status=RequestStatus.PROCESSING, started_at=now, updated_at=now
    )
    request = ProcessingRequest.objects.only("quality", "output_format").get(pk=request_id)
    options = CompressOptions(
        quality=request.quality, output_format=request.output_format, max_pixels=settings.IMAGE_MAX_PIXELS
    )

    groups: dict[str, _Group] = {}
    for image_id, url, key in ProductImage.objects.filter(claim_token=token).values_list(
        "id", "source_url", "source_key"
    ):
        groups.setdefault(key, _Group(url=url, key=key)).ids.append(image_id)

    pool = _io_pool()
    policy = fetch_policy()
    jobs: dict[Future[Any], tuple[str, _Group]] = {
        pool.submit(_timed_fetch, g.url, policy): ("fetch", g) for g in groups.values()
    }
    while jobs:
        finished, _ = wait(jobs, return_when=FIRST_COMPLETED)
        for future in finished:
            stage, group = jobs.pop(future)
            try:
                if stage == "fetch":
                    fetched, group.fetch_ms = future.result()
                    group.bytes_in = len(fetched.data)
                    start = time.perf_counter()
                    group.result = compress(fetched.data, options)
                    group.compress_ms = _ms(start)
                    del fetched
                    name = image_output_name(request_id, group.key, group.result.extension)
                    store = pool.submit(_timed_store, name, group.result.data, group.result.content_type)
                    jobs[store] = ("store", group)
                elif group.result is not None:
                    name, group.store_ms = future.result()
                    _record_done(request_id, token, group, group.result, name)
            except (FetchError, ImageRejected) as exc:
                _record_failed(request_id, token, group.ids, exc.code, exc.message)
            except Exception as exc:
                # One bad image must not take its batch down; the reason is kept on the row.
                logger.exception("image %s failed at %s", group.url, stage)
                code = "storage_error" if stage == "store" else "internal_error"
                _record_failed(request_id, token, group.ids, code, f"{type(exc).__name__}: {exc}")
            if stage == "store":
                group.result = None  # the bytes are stored: let them go
    request_try_finalize(request_id=request_id)


def _record_done(request_id: Any, token: str, group: _Group, result: CompressResult, name: str) -> None:
    bytes_in = group.bytes_in
    bytes_out = len(result.data)
    now = timezone.now()
    with transaction.atomic():
        changed = ProductImage.objects.filter(
            pk__in=group.ids, claim_token=token, status=ImageStatus.PROCESSING
        ).update(
            status=ImageStatus.DONE,
            finished_at=now,
            output_name=name,
            kept_original=result.kept_original,
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            width=result.width,
            height=result.height,
            input_format=result.input_format,
            fetch_ms=group.fetch_ms,
            compress_ms=group.compress_ms,
            store_ms=group.store_ms,
            error_code="",
            error_message="",
        )
        if changed:
            ProcessingRequest.objects.filter(pk=request_id).update(
                images_done=F("images_done") + changed,
                bytes_in=F("bytes_in") + changed * bytes_in,
                bytes_out=F("bytes_out") + changed * bytes_out,
                updated_at=now,
            )


def _record_failed(request_id: Any, token: str | None, image_ids: Sequence[Any], code: str, message: str) -> int:
    """Move images to `failed` and count them; `token=None` is the sweeper giving up."""
    now = timezone.now()
    images = ProductImage.objects.filter(pk__in=image_ids)
    images = (
        images.filter(claim_token=token, status=ImageStatus.PROCESSING)
        if token
        else images.exclude(status__in=(ImageStatus.DONE, ImageStatus.FAILED))
    )
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


def request_try_finalize(*, request_id: Any) -> bool:
    """Claim the request's finalisation if every image has ended. Exactly one caller wins
    the conditional UPDATE, and only the winner queues the finaliser."""
    won = ProcessingRequest.objects.filter(
        pk=request_id,
        status__in=(RequestStatus.PENDING, RequestStatus.PROCESSING),
        images_total=F("images_done") + F("images_failed"),
    ).update(status=RequestStatus.FINALIZING, updated_at=timezone.now())
    if won:
        async_task("requests_app.tasks.finalize_request", str(request_id))
    return bool(won)


# --- Sweeping -----------------------------------------------------------------------------


@dataclass
class SweepReport:
    reset: int = 0
    gave_up: int = 0
    dispatched: int = 0
    reconciled: int = 0
    refinalized: int = 0

    def __bool__(self) -> bool:
        return any(vars(self).values())


def sweep(*, now: Any = None) -> SweepReport:
    """Bring every image and request towards an end state, whatever the broker lost.

    - `processing` images whose claim is older than IMAGE_STALE_AFTER belong to a worker
      that died or timed out: re-queued alone (a crash may be theirs), or failed once
      they have used IMAGE_MAX_ATTEMPTS;
    - `pending` images never queued, or queued long ago while the broker holds nothing
      (the Redis broker loses in-flight tasks on a crash), are queued again;
    - requests whose images have all ended are reconciled from the rows and finalised;
      a finalisation that died half-way is run again.
    """
    now = now or timezone.now()
    report = SweepReport()

    stale = ProductImage.objects.filter(
        status=ImageStatus.PROCESSING, claimed_at__lt=now - timedelta(seconds=settings.IMAGE_STALE_AFTER)
    )
    for request_id, image_id, attempts, token in stale.values_list("request_id", "id", "attempts", "claim_token"):
        if attempts >= settings.IMAGE_MAX_ATTEMPTS:
            report.gave_up += _record_failed(
                request_id,
                token,
                [image_id],
                "too_many_attempts",
                f"The worker processing this image stopped (crash or timeout) {attempts} times.",
            )
            continue
        reset = ProductImage.objects.filter(pk=image_id, claim_token=token, status=ImageStatus.PROCESSING).update(
            status=ImageStatus.PENDING, claim_token="", queued_at=now
        )
        if reset:
            report.reset += 1
            # Alone in its batch: if it crashes the worker again, it takes nobody with it.
            async_task("imageproc.tasks.process_images", str(request_id), [str(image_id)], group=str(request_id))
            report.dispatched += 1

    orphaned = Q(queued_at__isnull=True)
    if get_broker().queue_size() == 0:
        orphaned |= Q(queued_at__lt=now - timedelta(seconds=settings.IMAGE_ORPHAN_AFTER))
    request_ids = set(
        ProductImage.objects.filter(orphaned, status=ImageStatus.PENDING)
        .values_list("request_id", flat=True)
        .distinct()
    )
    for request_id in request_ids:
        report.dispatched += images_dispatch(request_id=request_id)

    quiet = now - timedelta(seconds=settings.IMAGE_ORPHAN_AFTER)
    for request in ProcessingRequest.objects.filter(
        status__in=(RequestStatus.PENDING, RequestStatus.PROCESSING), updated_at__lt=quiet
    ).only("id", "images_total", "images_done", "images_failed"):
        if _reconcile(request):
            report.reconciled += 1
        if request_try_finalize(request_id=request.pk):
            report.refinalized += 1

    for request_id in ProcessingRequest.objects.filter(
        status=RequestStatus.FINALIZING, updated_at__lt=now - timedelta(seconds=settings.IMAGE_STALE_AFTER)
    ).values_list("id", flat=True):
        ProcessingRequest.objects.filter(pk=request_id, status=RequestStatus.FINALIZING).update(updated_at=now)
        async_task("requests_app.tasks.finalize_request", str(request_id))
        report.refinalized += 1

    if report:
        logger.info("sweep: %s", report)
    return report


def _reconcile(request: ProcessingRequest) -> bool:
    """Recount a quiet request's counters from its rows. A worker that died between
    moving an image and counting it leaves them one short; the rows are the truth."""
    counts = dict(
        ProductImage.objects.filter(request_id=request.pk)
        .values_list("status")
        .annotate(n=Count("id"))
        .values_list("status", "n")
    )
    done, failed = counts.get(ImageStatus.DONE, 0), counts.get(ImageStatus.FAILED, 0)
    if (done, failed) == (request.images_done, request.images_failed):
        return False
    logger.warning(
        "request %s: counters %s/%s reconciled to %s/%s",
        request.pk,
        request.images_done,
        request.images_failed,
        done,
        failed,
    )
    ProcessingRequest.objects.filter(pk=request.pk).update(images_done=done, images_failed=failed)
    return True
