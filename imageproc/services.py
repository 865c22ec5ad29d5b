"""The processing engine: dispatching batches, processing them, and sweeping what crashed.

The database is the source of truth and the queue only a trigger. Every step is a
conditional UPDATE that checks how many rows it changed, so a task delivered twice, or a
sweeper re-queueing work a live worker still holds, changes nothing twice.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
import uuid
from collections import defaultdict, deque
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
from requests_app.services import request_finalize

logger = logging.getLogger(__name__)

ERROR_MESSAGE_MAX = 500
# Distinct URLs a task claims at a time once its own batch is under way, while more than
# STEAL_LOOKAHEAD images of the request are still pending; closer to the end, only what it
# can start downloading at once, so that no worker sits on images another, idle, could take.
STEAL_URLS = 8
STEAL_LOOKAHEAD = 4 * STEAL_URLS
# After compressing an input this big, the worker returns freed heap pages to the system.
TRIM_AFTER_BYTES = 8 * 1024 * 1024
# Seconds between two writes of finished images (and of the request's progress counters).
RECORD_EVERY = 0.5


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
_pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor] | None = None

# glibc's mallopt parameters (malloc.h).
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def _io_pools() -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]:
    """The download and the upload pool of this worker process, created lazily after
    django-q2 forks the worker, so that kept-alive connections are reused from one batch
    to the next. Uploads have their own pool, so that an upload never waits behind
    downloads; it is as big, because a worker compresses small images faster than a few
    threads upload them at 100 ms each (the threads share one boto3 client: imageproc/s3.py)."""
    global _pools
    with _pool_lock:
        if _pools is None:
            _tune_malloc()
            threads = settings.IMAGE_IO_THREADS
            _pools = (
                ThreadPoolExecutor(max_workers=threads, thread_name_prefix="imagefetch"),
                ThreadPoolExecutor(max_workers=threads, thread_name_prefix="imagestore"),
            )
        return _pools


_libc: Any = None


def _tune_malloc() -> None:
    """Multi-MB downloads freed by many threads fragment glibc's heap: a worker kept 600 MB
    on 12 MP images. Fixed-threshold mmap for big blocks (returned to the system when
    freed) and two arenas held it near 300 MB (bench/). A no-op where libc is not glibc."""
    global _libc
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, 1024 * 1024)
        libc.mallopt(_M_ARENA_MAX, 2)
        _libc = libc
    except (OSError, AttributeError):
        pass


def _trim_malloc() -> None:
    """Give freed heap pages back to the system (after a big image)."""
    if _libc is not None and hasattr(_libc, "malloc_trim"):
        _libc.malloc_trim(0)


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


def images_dispatch(
    *, request_id: Any, only_unqueued: bool = False, batch_size: int | None = None, process_first: bool = False
) -> int:
    """Queue every pending image of a request in batches; return the number of batches.

    The upload queues one dispatch task rather than thousands of batch tasks, so that the
    web request stays short whatever the size of the CSV. That task (`process_first`)
    queues all batches but the first, then processes the first itself: the request starts
    one queue poll sooner, and a worker that dies on it leaves the other batches queued.
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
    for ids in batches[1:] if process_first else batches:
        async_task("imageproc.tasks.process_images", str(request_id), ids, group=str(request_id))
    if process_first:
        image_process(request_id=request_id, image_ids=batches[0])
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
    name: str = ""


def _ms(start: float) -> int:
    return int((time.perf_counter() - start) * 1000)


def _timed_fetch(url: str, policy: FetchPolicy) -> tuple[FetchResult, int]:
    start = time.perf_counter()
    return fetch_image(url, policy=policy), _ms(start)


def _timed_store(request_id: Any, key: str, result: CompressResult) -> tuple[str, int]:
    # Named here, in an upload thread: the name hashes the output's bytes, work the
    # compressing thread need not wait for.
    start = time.perf_counter()
    name = image_output_name(request_id, key, result.data, result.extension)
    content = ContentFile(result.data, name=name)
    content.content_type = result.content_type  # type: ignore[attr-defined]  # read by the S3 backend
    saved = default_storage.save(name, content)
    return saved, _ms(start)


def image_process(*, request_id: Any, image_ids: Sequence[Any]) -> None:
    """Process one batch: claim, then stream it through fetch (concurrent) → compress (here)
    → store (concurrent), recording results as they land; then try to claim the request's
    finalisation.

    When its own images are all under way, the task claims more pending images of the same
    request (first attempts only, for IMAGE_STEAL_SECONDS at most), so that a worker never
    waits at a batch boundary for the first download of its next batch, and the workers end
    a request together. The tasks of the images it took find them claimed and do nothing.
    """
    token = uuid.uuid4().hex
    now = timezone.now()
    claimed = ProductImage.objects.filter(pk__in=image_ids, status=ImageStatus.PENDING).update(
        status=ImageStatus.PROCESSING, claim_token=token, claimed_at=now, attempts=F("attempts") + 1
    )
    if not claimed:
        # Delivered twice, or the sweeper re-queued what another worker already holds.
        request_try_finalize(request_id=request_id, here=True)
        return
    ProcessingRequest.objects.filter(pk=request_id, status=RequestStatus.PENDING).update(
        status=RequestStatus.PROCESSING, started_at=now, updated_at=now
    )
    request = ProcessingRequest.objects.only("quality", "output_format").get(pk=request_id)
    options = CompressOptions(
        quality=request.quality, output_format=request.output_format, max_pixels=settings.IMAGE_MAX_PIXELS
    )
    groups, retried = _claimed_groups(ProductImage.objects.filter(claim_token=token))
    _crash_hook(groups)
    # A retry runs alone (the sweeper queues a stale image by itself): if that image kills
    # the worker again, it must not take images it stole with it.
    stream = _Stream(request_id, token, options, groups, steal=not retried)
    stream.run()
    logger.info(
        "request %s: %d URLs in %.2f s, the compressor idle %.2f s of it",
        request_id,
        stream.fetched,
        time.monotonic() - stream.started,
        stream.waited,
    )
    request_try_finalize(request_id=request_id, here=True)


def _claimed_groups(images: Any) -> tuple[list[_Group], bool]:
    """The claimed images grouped by source URL, and whether any of them is a retry."""
    # order_by(): Meta.ordering (product, then its request) would join two more tables or
    # collections into a read that needs only this one (tests/test_mongo_offline.py).
    rows = list(images.order_by().values_list("id", "source_url", "source_key", "attempts"))
    return _grouped(rows), any(row[3] > 1 for row in rows)


def _grouped(rows: Iterable[Sequence[Any]]) -> list[_Group]:
    """(image id, source URL, source key, ...) rows as one group per source URL."""
    groups: dict[str, _Group] = {}
    for image_id, url, key, *_ in rows:
        groups.setdefault(key, _Group(url=url, key=key)).ids.append(image_id)
    return list(groups.values())


class _Stream:
    """The pipeline of one task. The main thread compresses one image at a time; the I/O
    pool downloads ahead of it and uploads behind it.

    Downloads run ahead within a memory budget (IMAGE_PREFETCH_BYTES of inputs downloaded
    or, at the average size seen so far, being downloaded, besides the one being compressed),
    so a worker fed 12 MP PNGs holds a few of them, not IMAGE_IO_THREADS. Results are
    recorded in one transaction every RECORD_EVERY seconds.
    """

    def __init__(
        self, request_id: Any, token: str, options: CompressOptions, groups: list[_Group], *, steal: bool
    ) -> None:
        self.request_id = request_id
        self.token = token
        self.options = options
        self.todo: deque[_Group] = deque(groups)
        self.fetching: dict[Future[tuple[FetchResult, int]], _Group] = {}
        self.storing: dict[Future[tuple[str, int]], _Group] = {}
        self.ready: deque[tuple[_Group, bytes]] = deque()
        self.finished: list[_Group] = []
        self.held = 0  # bytes of inputs downloaded and waiting for the compressor
        self.fetched = 0
        self.fetched_bytes = 0
        self.threads = settings.IMAGE_IO_THREADS
        self.budget = settings.IMAGE_PREFETCH_BYTES
        self.started = time.monotonic()
        self.steal_until = self.started + settings.IMAGE_STEAL_SECONDS if steal else 0.0
        self.fetch_pool, self.store_pool = _io_pools()
        self.waited = 0.0  # seconds the compressor had nothing to do
        self.recorded = self.started  # when results were last written to the database
        self.policy = fetch_policy()

    def run(self) -> None:
        while self.todo or self.fetching or self.ready or self.storing:
            if self.ready:
                group, data = self.ready.popleft()
                # The budget is for inputs ahead of the compressor: the next downloads start
                # before this image is compressed, not after. A 12 MP PNG takes ~0.3 s; had
                # it counted against the budget until then, the next image would only begin
                # to download once it was done, and the compressor would wait for it.
                self.held -= len(data)
                self._fetch_ahead()
                self._compress(group, data)
                if len(data) >= TRIM_AFTER_BYTES:
                    del data
                    _trim_malloc()
                self._collect(block=False)
            else:
                self._fetch_ahead()
                self._collect(block=True)
            self._record()
        self._record(flush=True)

    def _expected_size(self) -> int:
        # Before the first download ends, assume a large photograph.
        return self.fetched_bytes // self.fetched if self.fetched else 4 * 1024 * 1024

    def _fetch_ahead(self) -> None:
        while len(self.fetching) < self.threads:
            in_memory = self.held + len(self.fetching) * self._expected_size()
            # Always keep one download going while the CPU has nothing to do.
            if in_memory >= self.budget and (self.fetching or self.ready):
                return
            if not self.todo:
                room = max(1, (self.budget - in_memory) // self._expected_size())
                if not self._steal(min(room, self.threads - len(self.fetching))):
                    return
                continue  # what was claimed may be nothing: look again
            group = self.todo.popleft()
            self.fetching[self.fetch_pool.submit(_timed_fetch, group.url, self.policy)] = group

    def _steal(self, room: int) -> bool:
        """Claim more pending URLs of the request: STEAL_URLS of them, or only `room` (what
        can be downloaded now) near the request's end. False when there are none."""
        if time.monotonic() > self.steal_until:
            return False
        pending = ProductImage.objects.filter(request_id=self.request_id, status=ImageStatus.PENDING, attempts=0)
        ahead = list(pending.order_by().values_list("source_key", flat=True)[:STEAL_LOOKAHEAD])
        urls = STEAL_URLS if len(ahead) == STEAL_LOOKAHEAD else min(room, STEAL_URLS)
        keys: list[str] = []
        for key in ahead:
            if key not in keys:
                keys.append(key)
                if len(keys) == urls:
                    break
        if not keys:
            self.steal_until = 0.0
            return False
        # Every copy of these URLs, so that each is still fetched once.
        rows = list(pending.filter(source_key__in=keys).order_by().values_list("id", "source_url", "source_key"))
        ids = [row[0] for row in rows]
        claimed = ProductImage.objects.filter(pk__in=ids, status=ImageStatus.PENDING).update(
            status=ImageStatus.PROCESSING, claim_token=self.token, claimed_at=timezone.now(), attempts=F("attempts") + 1
        )
        if claimed == len(ids):  # all ours: no need to read them back
            taken = _grouped(rows)
        elif claimed:  # another worker took some of them meanwhile: read back which are ours
            taken, _ = _claimed_groups(ProductImage.objects.filter(pk__in=ids, claim_token=self.token))
        else:
            return True  # another worker was quicker: the caller looks again
        _crash_hook(taken)
        self.todo.extend(taken)
        return True

    def _compress(self, group: _Group, data: bytes) -> None:
        start = time.perf_counter()
        try:
            group.result = compress(data, self.options)
        except ImageRejected as exc:
            _record_failed(self.request_id, self.token, group.ids, exc.code, exc.message)
            return
        except Exception as exc:
            logger.exception("image %s failed at compress", group.url)
            _record_failed(self.request_id, self.token, group.ids, "internal_error", f"{type(exc).__name__}: {exc}")
            return
        group.compress_ms = _ms(start)
        future = self.store_pool.submit(_timed_store, self.request_id, group.key, group.result)
        self.storing[future] = group

    def _collect(self, *, block: bool) -> None:
        futures: list[Future[Any]] = [*self.fetching, *self.storing]
        if block:
            start = time.perf_counter()
            # Finished images are written when due even if the wait is long (a hanging
            # download, stopped only by the task's timeout, must not take them down with it).
            due = self.recorded + RECORD_EVERY - time.monotonic() if self.finished else None
            done, _ = wait(futures, timeout=None if due is None else max(due, 0.0), return_when=FIRST_COMPLETED)
            self.waited += time.perf_counter() - start
        else:
            done = {f for f in futures if f.done()}
        for future in done:
            if future in self.fetching:
                group = self.fetching.pop(future)
                try:
                    fetched, group.fetch_ms = future.result()
                except FetchError as exc:
                    _record_failed(self.request_id, self.token, group.ids, exc.code, exc.message)
                    continue
                except Exception as exc:
                    logger.exception("image %s failed at fetch", group.url)
                    _record_failed(
                        self.request_id, self.token, group.ids, "internal_error", f"{type(exc).__name__}: {exc}"
                    )
                    continue
                group.bytes_in = len(fetched.data)
                self.held += group.bytes_in
                self.fetched += 1
                self.fetched_bytes += group.bytes_in
                self.ready.append((group, fetched.data))
            else:
                group = self.storing.pop(future)
                try:
                    group.name, group.store_ms = future.result()
                except Exception as exc:
                    logger.exception("image %s failed at store", group.url)
                    _record_failed(
                        self.request_id, self.token, group.ids, "storage_error", f"{type(exc).__name__}: {exc}"
                    )
                    group.result = None
                    continue
                self.finished.append(group)

    def _record(self, *, flush: bool = False) -> None:
        # One transaction per RECORD_EVERY seconds, not one per image: on SQLite every write
        # transaction waits for the database lock the other workers also want.
        if self.finished and (flush or time.monotonic() - self.recorded >= RECORD_EVERY):
            _record_done(self.request_id, self.token, self.finished)
            self.finished = []
            self.recorded = time.monotonic()


def _crash_hook(groups: Iterable[_Group]) -> None:
    """TEST ONLY (IMAGEPROC_CRASH_ON_URL_SUBSTRING, empty in real deployments): die holding
    the claim, as a worker killed by the OOM killer or a segfaulting decoder would."""
    marker = settings.IMAGEPROC_CRASH_ON_URL_SUBSTRING
    if marker and any(marker in group.url for group in groups):
        logger.critical("IMAGEPROC_CRASH_ON_URL_SUBSTRING matched: this worker exits now (test hook)")
        os._exit(1)


def _record_done(request_id: Any, token: str, groups: list[_Group]) -> None:
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


def _record_failed(request_id: Any, token: str, image_ids: Sequence[Any], code: str, message: str) -> int:
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


def request_try_finalize(*, request_id: Any, here: bool = False) -> bool:
    """Claim the request's finalisation if every image has ended. Exactly one caller wins
    the conditional UPDATE, and only the winner finalises: at once in this process with
    `here` (an image task, which ended the request), else through the queue."""
    won = ProcessingRequest.objects.filter(
        pk=request_id,
        status__in=(RequestStatus.PENDING, RequestStatus.PROCESSING),
        images_total=F("images_done") + F("images_failed"),
    ).update(status=RequestStatus.FINALIZING, updated_at=timezone.now())
    if won and here:
        try:
            request_finalize(request_id=request_id)
        except Exception:  # S3 or the database failed: the queue retries it
            logger.exception("request %s: finalisation failed; queued to be tried again", request_id)
            async_task("requests_app.tasks.finalize_request", str(request_id))
    elif won:
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
    webhooks: int = 0

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
    # order_by() keeps these reads on one table/collection (see image_process).
    for request_id, image_id, attempts, token in stale.order_by().values_list(
        "request_id", "id", "attempts", "claim_token"
    ):
        if attempts >= settings.IMAGE_MAX_ATTEMPTS:
            report.gave_up += _record_failed(
                request_id,
                token,
                [image_id],
                "too_many_attempts",
                f"The worker processing this image stopped (crash or timeout) {attempts} times.",
            )
            # It may have been the request's last image: nobody else will claim the end.
            if request_try_finalize(request_id=request_id):
                report.refinalized += 1
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
        .order_by()
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

    # Due webhook retries live in the database, not only in the queue: a restart loses none.
    from requests_app.webhooks import webhook_sweep

    try:
        report.webhooks = webhook_sweep(now=now)
    except Exception:  # a webhook problem must not stop the image sweep from finishing
        logger.exception("sweep: webhooks failed")

    if report:
        logger.info("sweep: %s", report)
    return report


def _reconcile(request: ProcessingRequest) -> bool:
    """Recount a quiet request's counters from its rows. A worker that died between
    moving an image and counting it leaves them one short; the rows are the truth."""
    # order_by(): SQL drops Meta.ordering from a GROUP BY, MongoDB's backend still joins for it.
    counts = dict(
        ProductImage.objects.filter(request_id=request.pk)
        .order_by()
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
