"""Processing one batch: claim, then stream it through fetch → compress → store, recording
results as they land.

The database is the source of truth and the queue only a trigger. Every step is a
conditional UPDATE that checks how many rows it changed, so a task delivered twice, or a
sweeper re-queueing work a live worker still holds, changes nothing twice.

Dependencies that are briefly down cost time, not images: an origin's transient error sets
the image aside to be fetched again later (FETCH_RETRY_MAX times at most), an upload is
tried again while the storage is down, the database's reads and writes while it restarts
(imageproc.pipeline.transient); none of it spends the image's attempts, which count the
crashes and timeouts of its workers.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from datetime import timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db.models import F
from django.utils import timezone

from imageproc.engine.compress import CompressOptions, CompressResult, ImageRejected, compress
from imageproc.engine.http import FetchError, FetchPolicy, FetchResult, fetch_image
from imageproc.engine.naming import image_output_name, rendition_output_name
from imageproc.engine.renditions import render
from imageproc.pipeline import fairness, hosts
from imageproc.pipeline.finalize import request_try_finalize
from imageproc.pipeline.leases import holding, lease_end
from imageproc.pipeline.records import (
    Group,
    SizedOutput,
    compression_record,
    existing_outputs,
    pending_due,
    record_done,
    record_failed,
    record_outputs,
    record_set_aside,
)
from imageproc.pipeline.resources import fetch_policy, io_pools, trim_malloc
from imageproc.pipeline.transient import (
    backoff,
    db_is_transient,
    describe,
    fetch_is_transient,
    fetch_retry_after,
    retry_call,
    with_db_retry,
)
from imageproc.storage import storage_error_is_transient
from products.models import ImageStatus, ProductImage
from requests_app.models import ProcessingRequest, RequestStatus

logger = logging.getLogger(__name__)

T = TypeVar("T")


# STEAL_LOOKAHEAD images of the request are still pending; closer to the end, only what it
# can start downloading at once, so that no worker sits on images another, idle, could take.
STEAL_URLS = 8
STEAL_LOOKAHEAD = 4 * STEAL_URLS
# After compressing an input this big, the worker returns freed heap pages to the system.
TRIM_AFTER_BYTES = 8 * 1024 * 1024
# Seconds between two writes of finished images (and of the request's progress counters).
RECORD_EVERY = 0.5


def _ms(start: float) -> int:
    return int((time.perf_counter() - start) * 1000)


def _timed_fetch(url: str, policy: FetchPolicy) -> tuple[FetchResult, int]:
    """Download in a thread of the pool, within the host's limits (imageproc.pipeline.hosts):
    raises HostBusy without asking a host that is full or paused, and pauses a host that
    answers with a transient error."""
    host = hosts.host_of(url)
    retrying = settings.FETCH_RETRY_MAX > 0
    if retrying and (paused := hosts.paused_for(host)):
        raise hosts.HostBusy(host, paused, "the host failed a moment ago")
    slot = hosts.acquire(host)
    try:
        start = time.perf_counter()
        try:
            return fetch_image(url, policy=policy), _ms(start)
        except FetchError as exc:
            if retrying and fetch_is_transient(exc):
                hosts.pause(
                    host, min(fetch_retry_after(exc) or settings.FETCH_RETRY_BASE, settings.FETCH_RETRY_MAX_DELAY)
                )
            raise
    finally:
        hosts.release(slot)


def _timed_store(request_id: Any, key: str, result: CompressResult) -> tuple[str, int]:
    """Upload in a thread of the pool. While the storage is down, the upload is tried again
    with backoff for STORAGE_RETRY_SECONDS; then the last error goes up."""
    # Named here, in an upload thread: the name hashes the output's bytes, work the
    # compressing thread need not wait for.
    start = time.perf_counter()
    saved = _store(image_output_name(request_id, key, result.data, result.extension), result)
    return saved, _ms(start)


def _store(name: str, result: CompressResult) -> str:
    """Save one output under `name`, its Content-Type set; while the storage is down, again
    with backoff for STORAGE_RETRY_SECONDS, then the last error goes up."""

    def save() -> str:
        content = ContentFile(result.data, name=name)
        content.content_type = result.content_type  # type: ignore[attr-defined]  # read by the S3 backend
        return default_storage.save(name, content)

    return retry_call(
        save, transient=storage_error_is_transient, budget=settings.STORAGE_RETRY_SECONDS, what=f"storing {name}"
    )


def _timed_store_rendition(request_id: Any, key: str, result: CompressResult, sizes: tuple[int, ...]) -> SizedOutput:
    """Upload one rendition in a thread of the pool, as _timed_store does."""
    start = time.perf_counter()
    saved = _store(
        rendition_output_name(request_id, key, result.width, result.height, result.data, result.extension), result
    )
    return SizedOutput(
        sizes=sizes,
        name=saved,
        width=result.width,
        height=result.height,
        bytes=len(result.data),
        format=result.output_format,
        kept_original=result.kept_original,
        store_ms=_ms(start),
    )


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

    def claim() -> tuple[list[Group], bool]:
        ProductImage.objects.filter(pending_due(now), pk__in=image_ids).update(
            status=ImageStatus.PROCESSING,
            claim_token=token,
            claimed_at=now,
            lease_until=lease_end(now),
            attempts=F("attempts") + 1,
        )
        # Read back by token, not by the count: after a lost answer to a commit, the
        # UPDATE run again changes nothing, and the images are ours all the same.
        return _claimed_groups(ProductImage.objects.filter(claim_token=token))

    groups, retried = with_db_retry(claim, what=f"request {request_id}: claiming a batch")
    if not groups:
        # Delivered twice, or the sweeper re-queued what another worker already holds.
        _try_finalize(request_id)
        return
    with holding(token):
        request = with_db_retry(lambda: _start_request(request_id, now), what=f"request {request_id}: starting")
        options = CompressOptions(
            quality=request.quality_option,
            output_format=request.output_format,
            # A MongoDB document older than the field has none (None): the default, kept.
            keep_copyright=request.keep_copyright is not False,
            max_pixels=settings.IMAGE_MAX_PIXELS,
        )
        # A retry runs alone (the sweeper queues a stale image by itself): if that image kills
        # the worker again, it must not take images it stole with it.
        stream = _Stream(request_id, token, options, groups, steal=not retried, sizes=list(request.sizes or []))
        stream.run()
    logger.info(
        "request %s: %d URLs in %.2f s, the compressor idle %.2f s of it",
        request_id,
        stream.fetched,
        time.monotonic() - stream.started,
        stream.waited,
    )
    _try_finalize(request_id)


def _start_request(request_id: Any, now: Any) -> ProcessingRequest:
    ProcessingRequest.objects.filter(pk=request_id, status=RequestStatus.PENDING).update(
        status=RequestStatus.PROCESSING, started_at=now, updated_at=now
    )
    return ProcessingRequest.objects.only("quality", "quality_mode", "output_format", "keep_copyright", "sizes").get(
        pk=request_id
    )


def _try_finalize(request_id: Any) -> None:
    with_db_retry(
        lambda: request_try_finalize(request_id=request_id, here=True), what=f"request {request_id}: finalising"
    )


def _claimed_groups(images: Any) -> tuple[list[Group], bool]:
    """The claimed images grouped by source URL, and whether any of them is a retry."""
    # order_by(): Meta.ordering (product, then its request) would join two more tables or
    # collections into a read that needs only this one (tests/test_mongo_offline.py).
    rows = list(images.order_by().values_list("id", "source_url", "source_key", "transient_errors", "attempts"))
    return _grouped(rows), any(row[4] > 1 for row in rows)


def _grouped(rows: Iterable[Sequence[Any]]) -> list[Group]:
    """(image id, source URL, source key, transient errors, ...) rows as one group per URL."""
    groups: dict[str, Group] = {}
    for image_id, url, key, transient_errors, *_ in rows:
        group = groups.setdefault(key, Group(url=url, key=key))
        group.ids.append(image_id)
        group.transient_errors = max(group.transient_errors, transient_errors)
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
        self,
        request_id: Any,
        token: str,
        options: CompressOptions,
        groups: list[Group],
        *,
        steal: bool,
        sizes: list[int] | None = None,
    ) -> None:
        self.request_id = request_id
        # Renditions (largest first), or none: one output per image at its own size.
        self.sizes = sorted(sizes or [], reverse=True)
        # Uploads of renditions, and the renditions stored but not yet recorded.
        self.storing_outputs: dict[Future[SizedOutput], tuple[Group, tuple[int, ...]]] = {}
        self.outputs_ready: list[tuple[Group, SizedOutput]] = []
        self.token = token
        self.options = options
        self.todo: deque[Group] = deque(groups)
        self.fetching: dict[Future[tuple[FetchResult, int]], Group] = {}
        self.storing: dict[Future[tuple[str, int]], Group] = {}
        self.ready: deque[tuple[Group, bytes]] = deque()
        self.finished: list[Group] = []
        self.held = 0  # bytes of inputs downloaded and waiting for the compressor
        self.fetched = 0
        self.fetched_bytes = 0
        self.threads = settings.IMAGE_IO_THREADS
        self.budget = settings.IMAGE_PREFETCH_BYTES
        self.started = time.monotonic()
        self.steal_until = self.started + settings.IMAGE_STEAL_SECONDS if steal else 0.0
        self.fetch_pool, self.store_pool = io_pools()
        self.waited = 0.0  # seconds the compressor had nothing to do
        self.set_aside = 0  # URLs given back after a transient error
        self.recorded = self.started  # when results were last written to the database
        self.policy = fetch_policy()

    def run(self) -> None:
        while self.todo or self.fetching or self.ready or self.storing or self.storing_outputs:
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
                    trim_malloc()
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
        try:
            return self._try_steal(room)
        except Exception as exc:
            if not db_is_transient(exc):
                raise
            # The database is away: finish what this task holds, take nothing more.
            logger.warning("request %s: stopped claiming more images: %s", self.request_id, exc)
            self.steal_until = 0.0
            return False

    def _try_steal(self, room: int) -> bool:
        if fairness.yield_to_fairer(request_id=self.request_id, token=self.token, since=self.started):
            # Another client (or an older request of this one) is owed this worker: take
            # nothing more; once what it holds is done, its task serves that request
            # (imageproc.pipeline.work).
            self.steal_until = 0.0
            return False
        # First attempts only, never set aside (those wait for their time, then their task).
        pending = ProductImage.objects.filter(
            request_id=self.request_id, status=ImageStatus.PENDING, attempts=0, retry_at__isnull=True
        )
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
        rows = list(
            pending.filter(source_key__in=keys)
            .order_by()
            .values_list("id", "source_url", "source_key", "transient_errors")
        )
        ids = [row[0] for row in rows]
        now = timezone.now()
        claimed = ProductImage.objects.filter(pk__in=ids, status=ImageStatus.PENDING, retry_at__isnull=True).update(
            status=ImageStatus.PROCESSING,
            claim_token=self.token,
            claimed_at=now,
            lease_until=lease_end(now),
            attempts=F("attempts") + 1,
        )
        if claimed == len(ids):  # all ours: no need to read them back
            taken = _grouped(rows)
        elif claimed:  # another worker took some of them meanwhile: read back which are ours
            taken, _ = _claimed_groups(ProductImage.objects.filter(pk__in=ids, claim_token=self.token))
        else:
            return True  # another worker was quicker: the caller looks again
        self.todo.extend(taken)
        return True

    def _compress(self, group: Group, data: bytes) -> None:
        if self.sizes:
            self._render(group, data)
            return
        start = time.perf_counter()
        result = self._engine(group, "compress", lambda: compress(data, self.options))
        if result is None:
            return
        group.result = result
        group.compress_ms = _ms(start)
        future = self.store_pool.submit(_timed_store, self.request_id, group.key, group.result)
        self.storing[future] = group

    def _engine(self, group: Group, stage: str, work: Callable[[], T]) -> T | None:
        """What the engine made of one source, or None once the image is failed: with the
        engine's reason for a bad image, as internal_error for a bug of ours."""
        try:
            return work()
        except ImageRejected as exc:
            record_failed(self.request_id, self.token, group.ids, exc.code, exc.message)
        except Exception as exc:
            logger.exception("image %s failed at %s", group.url, stage)
            record_failed(self.request_id, self.token, group.ids, "internal_error", f"{type(exc).__name__}: {exc}")
        return None

    def _render(self, group: Group, data: bytes) -> None:
        """Every size of one source from one decode; each distinct rendition uploaded on its
        own, and recorded as it lands (_record). The sizes an earlier attempt stored and
        recorded are not made again."""
        start = time.perf_counter()
        have = with_db_retry(
            lambda: existing_outputs(group.ids, self.sizes), what=f"request {self.request_id}: reading outputs"
        )
        group.outputs = [have[size] for size in self.sizes if size in have]
        missing = [size for size in self.sizes if size not in have]
        renditions = self._engine(group, "render", lambda: render(data, missing, self.options)) if missing else []
        if renditions is None:
            return
        group.compress_ms = _ms(start)
        if renditions and missing[0] == self.sizes[0]:
            group.compression = compression_record(renditions[0].result)  # the largest size's
        # Boxes at or above the source's size share one result: stored once.
        distinct: dict[int, tuple[CompressResult, list[int]]] = {}
        for rendition in renditions:
            distinct.setdefault(id(rendition.result), (rendition.result, []))[1].append(rendition.size)
            group.input_format = rendition.result.input_format
        group.uploads_left = len(distinct)
        for result, sizes in distinct.values():
            future = self.store_pool.submit(_timed_store_rendition, self.request_id, group.key, result, tuple(sizes))
            self.storing_outputs[future] = (group, tuple(sizes))
        if not distinct:
            self._rendered(group)

    def _rendered(self, group: Group) -> None:
        # The image's own fields are the first (largest) size's output.
        group.outputs.sort(key=lambda output: -max(output.sizes))
        self.finished.append(group)

    def _collect_output(self, future: Future[SizedOutput]) -> None:
        group, _sizes = self.storing_outputs.pop(future)
        group.uploads_left -= 1
        try:
            output = future.result()
        except Exception as exc:
            if group.upload_failed:
                return  # already set aside or failed by another of its uploads
            group.upload_failed = True
            if storage_error_is_transient(exc):
                logger.warning("image %s: the storage is unavailable (%s); set aside", group.url, describe(exc))
                message = f"The storage is unavailable: {describe(exc)}"
                self._set_aside(group, settings.STORAGE_RETRY_LATER, "storage_unavailable", message, spent=False)
            else:
                logger.exception("image %s failed at store", group.url)
                record_failed(self.request_id, self.token, group.ids, "storage_error", describe(exc))
            return
        if group.upload_failed:
            return
        group.outputs.append(output)
        self.outputs_ready.append((group, output))
        if group.uploads_left == 0:
            self._rendered(group)

    def _collect(self, *, block: bool) -> None:
        futures: list[Future[Any]] = [*self.fetching, *self.storing, *self.storing_outputs]
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
            if future in self.storing_outputs:
                self._collect_output(future)
                continue
            if future in self.fetching:
                group = self.fetching.pop(future)
                try:
                    fetched, group.fetch_ms = future.result()
                except hosts.HostBusy as exc:
                    self._set_aside(group, exc.delay, "host_busy", f"Waiting for the host: {exc}", spent=False)
                    continue
                except FetchError as exc:
                    if fetch_is_transient(exc) and group.transient_errors < settings.FETCH_RETRY_MAX:
                        delay = max(
                            backoff(
                                group.transient_errors + 1,
                                base=settings.FETCH_RETRY_BASE,
                                cap=settings.FETCH_RETRY_MAX_DELAY,
                            ),
                            min(fetch_retry_after(exc) or 0.0, settings.FETCH_RETRY_MAX_DELAY),
                        )
                        self._set_aside(group, delay, exc.code, exc.message, spent=True)
                    else:
                        record_failed(self.request_id, self.token, group.ids, exc.code, exc.message)
                    continue
                except Exception as exc:
                    logger.exception("image %s failed at fetch", group.url)
                    record_failed(
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
                    group.result = None
                    if storage_error_is_transient(exc):
                        # Still down after STORAGE_RETRY_SECONDS: again later, from the download.
                        logger.warning("image %s: the storage is unavailable (%s); set aside", group.url, describe(exc))
                        message = f"The storage is unavailable: {describe(exc)}"
                        self._set_aside(
                            group, settings.STORAGE_RETRY_LATER, "storage_unavailable", message, spent=False
                        )
                    else:
                        logger.exception("image %s failed at store", group.url)
                        record_failed(self.request_id, self.token, group.ids, "storage_error", describe(exc))
                    continue
                self.finished.append(group)

    def _record(self, *, flush: bool = False) -> None:
        # One transaction per RECORD_EVERY seconds, not one per image: on SQLite every write
        # transaction waits for the database lock the other workers also want.
        if (self.finished or self.outputs_ready) and (flush or time.monotonic() - self.recorded >= RECORD_EVERY):
            if self.outputs_ready:
                # Before the images they belong to are marked done: an image done has them all.
                record_outputs(self.request_id, self.token, self.outputs_ready)
                self.outputs_ready = []
            if self.finished:
                record_done(self.request_id, self.token, self.finished)
            self.finished = []
            self.recorded = time.monotonic()

    def _set_aside(self, group: Group, delay: float, code: str, message: str, *, spent: bool) -> None:
        """Give the group's images back, to be queued again in `delay` seconds."""
        retry_at = timezone.now() + timedelta(seconds=delay)
        record_set_aside(
            self.request_id, self.token, group.ids, retry_at=retry_at, code=code, message=message, spent=spent
        )
        self.set_aside += 1
