"""Claims, counters, finalisation and the sweeper, called directly.

The queue is replaced by a recorder here (`queued`), so that each test sees what would be
queued without running it; the real queue is exercised by the end-to-end tests."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.core.files.storage import default_storage
from django.db import connection
from django.db.models import QuerySet
from django.utils import timezone

from imageproc import tasks
from imageproc.engine.compress import CompressOptions
from imageproc.pipeline import dispatch, finalize, process
from imageproc.pipeline import sweep as sweep_module
from imageproc.pipeline.dispatch import batches_by_url, images_dispatch
from imageproc.pipeline.finalize import request_finalize, request_try_finalize
from imageproc.pipeline.process import image_process
from imageproc.pipeline.sweep import sweep
from products.models import ImageStatus, Product, ProductImage
from requests_app.models import ProcessingRequest, RequestStatus
from requests_app.services import requests as request_services
from requests_app.services.clients import api_client_create
from requests_app.services.errors import RequestNotFinished
from requests_app.services.requests import request_create, request_reprocess, request_retry_failed
from tests.conftest import ImageServer, csv_bytes, make_image


@pytest.fixture
def queued(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    calls: list[tuple[Any, ...]] = []

    def record(func: str, *args: Any, **kwargs: Any) -> str:
        calls.append((func, *args))
        return "task-id"

    for module in (dispatch, finalize, sweep_module, request_services):
        monkeypatch.setattr(module, "async_task", record)
    return calls


@pytest.fixture
def owner(db: Any) -> Any:
    client, _ = api_client_create(name="acme")
    return client.user


def create(owner: Any, rows: list[tuple[str, str, list[str]]]) -> ProcessingRequest:
    # The `db` fixture never commits, so the dispatch queued on commit does not run.
    request, _ = request_create(owner=owner, csv_file=csv_bytes(rows))
    return request


def image_ids(request: ProcessingRequest) -> list[str]:
    return [str(i) for i in ProductImage.objects.filter(request=request).values_list("id", flat=True)]


def test_batches_keep_copies_of_a_url_together() -> None:
    pairs = [(1, "a"), (2, "b"), (3, "a"), (4, "c"), (5, "b"), (6, "d")]
    assert batches_by_url(pairs, batch_size=2) == [["1", "3", "2", "5"], ["4", "6"]]
    assert batches_by_url([], batch_size=2) == []


def test_upload_creates_rows_in_bulk(owner: Any, django_assert_max_num_queries: Any) -> None:
    rows = [(str(i), f"P{i}", [f"http://img.example/{i}/{j}.jpg" for j in range(3)]) for i in range(300)]
    # Bulk inserts are cut to the backend's parameter limit (999 on SQLite): a query per
    # batch, never one per row.
    fields = {model: list(model._meta.concrete_fields) for model in (Product, ProductImage)}
    batches = sum(
        -(-count // min(2000, connection.ops.bulk_batch_size(fields[model], [None] * count)))
        for model, count in ((Product, 300), (ProductImage, 900))
    )
    # Besides the batches: the active-request count, the request row, and the transaction.
    with django_assert_max_num_queries(batches + 4):
        request = create(owner, rows)
    assert batches < 100
    assert request.products_total == 300
    assert request.images_total == 900
    assert ProductImage.objects.filter(request=request).count() == 900


def test_dispatch_queues_batches_once(owner: Any, queued: list[Any]) -> None:
    urls = [f"http://img.example/{i}.jpg" for i in range(5)]
    request = create(owner, [("1", "A", [*urls, urls[0]])])
    assert images_dispatch(request_id=request.pk, batch_size=2) == 3
    batches = [call[2] for call in queued]
    assert sorted(len(b) for b in batches) == [2, 2, 2]  # the copy of urls[0] rides with it
    assert all(i.queued_at for i in ProductImage.objects.filter(request=request))
    assert images_dispatch(request_id=request.pk, only_unqueued=True) == 0


def test_the_dispatch_task_processes_its_first_batch_itself(
    owner: Any, queued: list[Any], image_server: ImageServer, settings: Any
) -> None:
    settings.IMAGE_BATCH_SIZE = 2
    settings.IMAGE_STEAL_SECONDS = 0  # the first batch keeps to its own images here
    urls = [image_server.add(f"/d{i}.jpg", make_image(40 + i, 30)) for i in range(5)]
    request = create(owner, [("1", "A", urls)])
    assert tasks.dispatch_request(str(request.pk)) == 3
    # The other batches are queued (before the first is processed, so that other workers
    # start on them meanwhile); the first batch's images are done, by this task.
    queued_ids = {image_id for call in queued for image_id in call[2]}
    assert [call[0] for call in queued] == ["imageproc.tasks.process_images"] * 2
    assert sorted(len(call[2]) for call in queued) == [1, 2]
    images = ProductImage.objects.filter(request=request)
    done = {str(i.pk) for i in images if i.status == ImageStatus.DONE}
    assert len(done) == 2
    assert done.isdisjoint(queued_ids)
    assert {str(i.pk) for i in images if i.status == ImageStatus.PENDING} == queued_ids


def test_a_task_run_twice_changes_nothing(owner: Any, queued: list[Any], image_server: ImageServer) -> None:
    url = image_server.add("/a.jpg", make_image(120, 80))
    request = create(owner, [("1", "A", [url, url]), ("2", "B", [image_server.base_url + "/missing.jpg"])])
    ids = image_ids(request)
    image_process(request_id=request.pk, image_ids=ids)
    request.refresh_from_db()
    first = (request.images_done, request.images_failed, request.bytes_in, request.bytes_out, request.status)
    rows = list(ProductImage.objects.filter(request=request).order_by("id").values())
    assert first[:2] == (2, 1)
    assert image_server.hits["/a.jpg"] == 1
    # The task that ended the request finalised it at once: nothing went through the queue.
    assert request.status == RequestStatus.COMPLETED_WITH_ERRORS
    assert request.output_csv_name.endswith("output.csv")
    assert queued == []

    image_process(request_id=request.pk, image_ids=ids)
    request.refresh_from_db()
    assert (request.images_done, request.images_failed, request.bytes_in, request.bytes_out, request.status) == first
    assert list(ProductImage.objects.filter(request=request).order_by("id").values()) == rows
    assert image_server.hits["/a.jpg"] == 1
    assert queued == []


def test_finalize_writes_csv_and_final_status_once(owner: Any, queued: list[Any], image_server: ImageServer) -> None:
    url = image_server.add("/f.jpg", make_image(50, 50))
    request = create(owner, [("1", "A", [url])])
    image_process(request_id=request.pk, image_ids=image_ids(request))  # finalises it
    request.refresh_from_db()
    assert request.status == RequestStatus.COMPLETED
    assert request.completed_at is not None
    assert request.output_csv_name.endswith("output.csv")
    completed_at = request.completed_at
    assert request_finalize(request_id=request.pk) is None
    request.refresh_from_db()
    assert request.completed_at == completed_at


def test_a_finalisation_that_fails_in_the_task_is_queued_again(
    owner: Any, queued: list[Any], image_server: ImageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = image_server.add("/g.jpg", make_image(50, 50))
    request = create(owner, [("1", "A", [url])])

    save = finalize.default_storage.save

    def csv_write_fails(name: str, content: Any, **kwargs: Any) -> str:
        if name.endswith(".csv"):
            raise OSError("storage unavailable")
        return save(name, content, **kwargs)

    monkeypatch.setattr(finalize.default_storage, "save", csv_write_fails)
    image_process(request_id=request.pk, image_ids=image_ids(request))
    request.refresh_from_db()
    assert (request.images_done, request.status) == (1, RequestStatus.FINALIZING)
    assert queued == [("imageproc.tasks.finalize_request", str(request.pk))]


@pytest.mark.django_db(transaction=True)
def test_racing_tasks_claim_finalisation_once(queued: list[Any]) -> None:
    client, _ = api_client_create(name="race")
    request = ProcessingRequest.objects.create(
        owner=client.user, status=RequestStatus.PROCESSING, images_total=4, images_done=3, images_failed=1
    )
    barrier = threading.Barrier(6)
    wins: list[bool] = []

    def contend() -> None:
        try:
            barrier.wait()
            wins.append(request_try_finalize(request_id=request.pk))
        finally:
            connection.close()

    threads = [threading.Thread(target=contend) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 5 + [True]
    assert [c[0] for c in queued] == ["imageproc.tasks.finalize_request"]


def test_unfinished_request_is_not_finalised(owner: Any, queued: list[Any]) -> None:
    request = create(owner, [("1", "A", ["http://img.example/x.jpg"])])
    assert request_try_finalize(request_id=request.pk) is False
    request.refresh_from_db()
    assert request.status == RequestStatus.PENDING


def test_sweep_requeues_a_stale_image_alone_then_gives_up(owner: Any, queued: list[Any], settings: Any) -> None:
    request = create(owner, [("1", "A", ["http://img.example/a.jpg", "http://img.example/b.jpg"])])
    stale_id, fresh_id = image_ids(request)
    long_ago = timezone.now() - timedelta(seconds=settings.IMAGE_STALE_AFTER + 5)
    ProductImage.objects.filter(pk=stale_id).update(
        status=ImageStatus.PROCESSING, claim_token="dead", claimed_at=long_ago, attempts=1, queued_at=long_ago
    )
    ProductImage.objects.filter(pk=fresh_id).update(queued_at=timezone.now())

    report = sweep()
    assert report.reset == 1
    assert ("imageproc.tasks.process_images", str(request.pk), [stale_id]) in queued
    image = ProductImage.objects.get(pk=stale_id)
    assert (image.status, image.claim_token) == (ImageStatus.PENDING, "")

    # The image kept crashing its worker until it used every attempt.
    ProductImage.objects.filter(pk=stale_id).update(
        status=ImageStatus.PROCESSING, claim_token="dead", claimed_at=long_ago, attempts=settings.IMAGE_MAX_ATTEMPTS
    )
    assert sweep().gave_up == 1
    image.refresh_from_db()
    assert image.status == ImageStatus.FAILED
    assert image.error_code == "too_many_attempts"
    assert "3 times" in image.error_message
    request.refresh_from_db()
    assert request.images_failed == 1


def test_sweep_requeues_orphaned_pending_images(owner: Any, queued: list[Any], settings: Any) -> None:
    request = create(owner, [("1", "A", ["http://img.example/a.jpg"])])
    ProductImage.objects.filter(request=request).update(queued_at=timezone.now())
    assert sweep().dispatched == 0  # queued recently: the broker may still hold it

    long_ago = timezone.now() - timedelta(seconds=settings.IMAGE_ORPHAN_AFTER + 5)
    ProductImage.objects.filter(request=request).update(queued_at=long_ago)
    assert sweep().dispatched == 1  # the broker is empty: the task was lost
    assert queued[-1][:2] == ("imageproc.tasks.process_images", str(request.pk))


def test_sweep_reconciles_counters_and_finalises(owner: Any, queued: list[Any], settings: Any) -> None:
    request = create(owner, [("1", "A", ["http://img.example/a.jpg", "http://img.example/b.jpg"])])
    # A worker died between marking an image done and counting it.
    ProductImage.objects.filter(request=request).update(status=ImageStatus.DONE, output_name="x.jpg")
    long_ago = timezone.now() - timedelta(seconds=settings.IMAGE_ORPHAN_AFTER + 5)
    ProcessingRequest.objects.filter(pk=request.pk).update(
        status=RequestStatus.PROCESSING, images_done=1, updated_at=long_ago
    )
    report = sweep()
    assert (report.reconciled, report.refinalized) == (1, 1)
    request.refresh_from_db()
    # The sweeper finalises it itself (the broker may be what failed).
    assert (request.images_done, request.status) == (2, RequestStatus.COMPLETED)
    assert queued == []


def test_sweep_reruns_a_finalisation_that_died(owner: Any, queued: list[Any], settings: Any) -> None:
    request = create(owner, [("1", "A", ["http://img.example/a.jpg"])])
    ProductImage.objects.filter(request=request).update(status=ImageStatus.FAILED, error_code="http_404")
    ProcessingRequest.objects.filter(pk=request.pk).update(images_failed=1)
    # Quiet for less than a lease: its finaliser may still be at work.
    recently = timezone.now() - timedelta(seconds=settings.IMAGE_LEASE_SECONDS - 5)
    ProcessingRequest.objects.filter(pk=request.pk).update(status=RequestStatus.FINALIZING, updated_at=recently)
    assert sweep().refinalized == 0
    long_ago = timezone.now() - timedelta(seconds=settings.IMAGE_LEASE_SECONDS + 5)
    ProcessingRequest.objects.filter(pk=request.pk).update(updated_at=long_ago)
    assert sweep().refinalized == 1
    # Run again by the sweeper itself, not through the queue (the broker may be what failed).
    request.refresh_from_db()
    assert (request.status, request.output_csv_name) == (RequestStatus.FAILED, f"outputs/{request.pk}/output.csv")
    assert queued == []


def test_retry_failed_resets_attempts_and_counters(owner: Any, queued: list[Any], image_server: ImageServer) -> None:
    request = create(owner, [("1", "A", [image_server.base_url + "/later.jpg"])])
    image_process(request_id=request.pk, image_ids=image_ids(request))
    request_finalize(request_id=request.pk)
    request.refresh_from_db()
    assert request.status == RequestStatus.FAILED
    assert request_retry_failed(request=request) == 1
    assert (request.status, request.images_failed) == (RequestStatus.PROCESSING, 0)
    image = ProductImage.objects.get(request=request)
    assert (image.status, image.attempts, image.error_code) == (ImageStatus.PENDING, 0, "")
    assert (image.transient_errors, image.retry_at, image.lease_until) == (0, None, None)


def test_retry_refuses_an_unfinished_request(owner: Any, queued: list[Any]) -> None:
    request = create(owner, [("1", "A", ["http://img.example/a.jpg"])])
    with pytest.raises(RequestNotFinished):
        request_retry_failed(request=request)


def test_rejected_upload_leaves_no_rows_without_transactions(owner: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """MongoDB's atomic() does nothing: rows stored before a problem is found further down
    the file must be deleted by hand."""
    import contextlib
    from types import SimpleNamespace

    from imageproc.engine import csv_io

    no_transactions = SimpleNamespace(atomic=lambda *a, **k: contextlib.nullcontext(), on_commit=lambda f: None)
    monkeypatch.setattr(request_services, "transaction", no_transactions)
    monkeypatch.setattr(
        request_services, "connection", SimpleNamespace(features=SimpleNamespace(supports_transactions=False))
    )
    monkeypatch.setattr(request_services, "INGEST_CHUNK", 1)
    rows = [("1", "A", ["http://img.example/a.jpg"]), ("2", "B", ["http://img.example/b.jpg"]), ("3", "", ["x"])]
    with pytest.raises(csv_io.CsvInvalid):
        create(owner, rows)
    assert Product.objects.count() == ProductImage.objects.count() == 0
    assert ProcessingRequest.objects.count() == 0


def test_giving_up_on_the_last_image_finalises_at_once(owner: Any, queued: list[Any], settings: Any) -> None:
    request = create(owner, [("1", "A", ["http://img.example/a.jpg"])])
    long_ago = timezone.now() - timedelta(seconds=settings.IMAGE_STALE_AFTER + 5)
    ProductImage.objects.filter(request=request).update(
        status=ImageStatus.PROCESSING, claim_token="dead", claimed_at=long_ago, attempts=settings.IMAGE_MAX_ATTEMPTS
    )
    ProcessingRequest.objects.filter(pk=request.pk).update(status=RequestStatus.PROCESSING)
    report = sweep()
    assert (report.gave_up, report.refinalized) == (1, 1)
    request.refresh_from_db()
    assert (request.status, request.images_failed) == (RequestStatus.FAILED, 1)
    assert queued == []


def _stealer(request: ProcessingRequest) -> process._Stream:
    """A task's stream with its own batch done, left to claim more of the request."""
    return process._Stream(request.pk, uuid.uuid4().hex, CompressOptions(), [], steal=True)


def test_two_tasks_stealing_take_every_url_once_with_all_its_copies(owner: Any) -> None:
    urls = [f"http://img.example/{i}.jpg" for i in range(7)]
    # urls[0] three times and urls[1] twice, across products.
    request = create(
        owner, [("1", "A", [urls[0], urls[1], urls[2]]), ("2", "B", [urls[0], *urls[3:]]), ("3", "C", urls[:2])]
    )
    first, second = _stealer(request), _stealer(request)
    while first._steal(2) | second._steal(3):
        pass
    taken = {stream.token: list(stream.todo) for stream in (first, second)}
    assert all(taken.values())
    by_url = [group.url for groups in taken.values() for group in groups]
    assert sorted(by_url) == sorted(urls)  # each URL once, in one task or the other
    for token, groups in taken.items():
        for group in groups:
            rows = ProductImage.objects.filter(source_url=group.url)
            assert sorted(group.ids) == sorted(rows.values_list("id", flat=True))
            assert {(r.status, r.claim_token, r.attempts) for r in rows} == {(ImageStatus.PROCESSING, token, 1)}
    assert not ProductImage.objects.filter(request=request, status=ImageStatus.PENDING).exists()


def test_a_steal_raced_by_another_task_keeps_only_what_it_claimed(owner: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    urls = [f"http://img.example/{i}.jpg" for i in range(3)]
    request = create(owner, [("1", "A", urls), ("2", "B", [urls[0]])])
    stream = _stealer(request)
    victim = ProductImage.objects.get(request=request, source_url=urls[1])
    update = QuerySet.update

    def other_task_first(self: QuerySet[Any], **kwargs: Any) -> int:
        if kwargs.get("claim_token") == stream.token:  # between our read and our claim
            update(ProductImage.objects.filter(pk=victim.pk), status=ImageStatus.PROCESSING, claim_token="other")
        return update(self, **kwargs)

    monkeypatch.setattr(QuerySet, "update", other_task_first)
    assert stream._steal(8)
    assert sorted(group.url for group in stream.todo) == [urls[0], urls[2]]
    assert sorted(i for group in stream.todo for i in group.ids) == sorted(
        ProductImage.objects.filter(claim_token=stream.token).values_list("id", flat=True)
    )
    assert len([i for group in stream.todo for i in group.ids]) == 3


def test_stealing_takes_a_handful_until_the_end_of_the_request_is_near(owner: Any) -> None:
    count = process.STEAL_LOOKAHEAD + 2 * process.STEAL_URLS + 4
    rows = [(str(i), f"P{i}", [f"http://img.example/{i}.jpg"]) for i in range(count)]
    stream = _stealer(create(owner, rows))
    taken = []
    while stream._steal(1):
        taken.append(len(stream.todo))
        stream.todo.clear()
    # STEAL_URLS at a time while at least STEAL_LOOKAHEAD are pending, then what there is room for.
    left, expected = count, []
    while left:
        expected.append(process.STEAL_URLS if left >= process.STEAL_LOOKAHEAD else 1)
        left -= expected[-1]
    assert taken == expected
    assert expected[:3] == [process.STEAL_URLS] * 3


def test_reprocessing_names_a_changed_output_anew_and_an_unchanged_one_the_same(
    owner: Any, queued: list[Any], image_server: ImageServer
) -> None:
    # Caches keep an output key for a year (Cache-Control: immutable): a key's bytes never change.
    url = image_server.add("/photo.jpg", make_image(120, 80))
    request = create(owner, [("1", "A", [url])])

    def processed() -> str:
        image_process(request_id=request.pk, image_ids=image_ids(request))
        image = ProductImage.objects.get(request=request)
        assert image.status == ImageStatus.DONE
        assert default_storage.exists(image.output_name)
        return image.output_name

    first = processed()
    request.refresh_from_db()
    request_reprocess(request=request)
    assert processed() == first  # the same bytes again: overwritten, not copied

    image_server.add("/photo.jpg", make_image(160, 90))  # the shop replaced it
    request.refresh_from_db()
    request_reprocess(request=request)
    second = processed()
    assert second != first
    assert second.rsplit("-", 1)[0] == first.rsplit("-", 1)[0]  # same request and input URL
    assert default_storage.exists(first)  # links in an earlier output CSV still work


# --- Leases, retries and the dependencies' outages, part by part ------------------------------------
# (tests/test_outages.py takes the real servers down.)


@pytest.fixture
def no_db_trouble() -> Any:
    """The sweeper remembers database trouble in the cache (LocMem here, shared by tests)."""
    from django.core.cache import cache

    from imageproc.pipeline import transient

    cache.delete("imageproc:db-trouble")
    transient._db_trouble_at = None
    yield
    cache.delete("imageproc:db-trouble")
    transient._db_trouble_at = None


def test_sweep_takes_back_an_expired_lease_not_a_renewed_one(
    owner: Any, queued: list[Any], settings: Any, no_db_trouble: Any
) -> None:
    from imageproc.pipeline.leases import renew

    request = create(owner, [("1", "A", ["http://img.example/a.jpg", "http://img.example/b.jpg"])])
    dead_id, slow_id = image_ids(request)
    # Both claimed long ago; only the slow one's worker is alive, renewing its lease.
    long_ago = timezone.now() - timedelta(seconds=settings.IMAGE_STALE_AFTER + 5)
    expired = timezone.now() - timedelta(seconds=1)
    ProductImage.objects.filter(pk=dead_id).update(
        status=ImageStatus.PROCESSING, claim_token="dead", claimed_at=long_ago, lease_until=expired, attempts=1
    )
    ProductImage.objects.filter(pk=slow_id).update(
        status=ImageStatus.PROCESSING, claim_token="slow", claimed_at=long_ago, lease_until=expired, attempts=1
    )
    assert renew({"slow"}) == 1
    slow = ProductImage.objects.get(pk=slow_id)
    assert slow.lease_until is not None and slow.lease_until > timezone.now()

    report = sweep()
    assert report.reset == 1
    assert queued == [("imageproc.tasks.process_images", str(request.pk), [dead_id])]
    dead = ProductImage.objects.get(pk=dead_id)
    assert (dead.status, dead.claim_token, dead.lease_until, dead.attempts) == (ImageStatus.PENDING, "", None, 1)
    slow.refresh_from_db()
    assert (slow.status, slow.claim_token) == (ImageStatus.PROCESSING, "slow")


def test_sweep_judges_no_lease_right_after_the_database_was_unreachable(
    owner: Any, queued: list[Any], no_db_trouble: Any
) -> None:
    from imageproc.pipeline.transient import note_db_trouble

    request = create(owner, [("1", "A", ["http://img.example/a.jpg"])])
    ProductImage.objects.filter(request=request).update(
        status=ImageStatus.PROCESSING,
        claim_token="t",
        claimed_at=timezone.now(),
        lease_until=timezone.now() - timedelta(seconds=1),
        attempts=1,
    )
    # A worker (any process: the cache says so) could not reach the database a moment ago,
    # so live workers could not renew their leases either: their claims are left alone.
    note_db_trouble()
    assert sweep().reset == 0
    assert ProductImage.objects.get(request=request).status == ImageStatus.PROCESSING


def test_a_claim_carries_a_lease(owner: Any, queued: list[Any], image_server: ImageServer, settings: Any) -> None:
    url = image_server.add("/lease.jpg", make_image(40, 30))
    request = create(owner, [("1", "A", [url])])
    seen: list[Any] = []
    original = process._Stream.run

    def run(stream: process._Stream) -> None:
        seen.append(ProductImage.objects.get(request=request).lease_until)
        original(stream)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(process._Stream, "run", run)
        before = timezone.now()
        image_process(request_id=request.pk, image_ids=image_ids(request))
    assert before + timedelta(seconds=settings.IMAGE_LEASE_SECONDS - 1) < seen[0]
    assert ProductImage.objects.get(request=request).status == ImageStatus.DONE


def _due_now(request: ProcessingRequest) -> None:
    """Bring the images set aside to their time."""
    ProductImage.objects.filter(request=request, retry_at__isnull=False).update(
        retry_at=timezone.now() - timedelta(seconds=1)
    )


def test_an_origins_transient_error_sets_the_image_aside_then_it_is_done(
    owner: Any, queued: list[Any], image_server: ImageServer, settings: Any
) -> None:
    from django.core.cache import cache

    from imageproc.pipeline.sweep import queue_due_images

    settings.FETCH_RETRY_MAX = 3
    cache.clear()
    flaky = image_server.add("/flaky.jpg", b"busy", content_type="text/plain", status=503)
    request = create(owner, [("1", "A", [flaky])])
    image_process(request_id=request.pk, image_ids=image_ids(request))

    aside = ProductImage.objects.get(request=request)
    # Set aside, its attempt given back, its error kept; queued again after the backoff.
    assert (aside.status, aside.attempts, aside.transient_errors) == (ImageStatus.PENDING, 0, 1)
    assert (aside.error_code, aside.queued_at, aside.claim_token) == ("http_503", None, "")
    assert timezone.now() < aside.retry_at <= timezone.now() + timedelta(seconds=settings.FETCH_RETRY_BASE)
    # Not queued before its time, nor claimed by the task of its original batch.
    assert queue_due_images() == 0
    image_process(request_id=request.pk, image_ids=[str(aside.pk)])
    assert image_server.hits["/flaky.jpg"] == 1

    image_server.add("/flaky.jpg", make_image(60, 40))  # the origin is back
    _due_now(request)
    cache.clear()  # and its pause is over
    assert queue_due_images() == 1
    assert queued[-1] == ("imageproc.tasks.process_images", str(request.pk), [str(aside.pk)])
    image_process(request_id=request.pk, image_ids=[str(aside.pk)])
    aside.refresh_from_db()
    assert (aside.status, aside.attempts, aside.error_code, aside.transient_errors) == (ImageStatus.DONE, 1, "", 1)
    request.refresh_from_db()
    assert (request.status, request.images_done) == (RequestStatus.COMPLETED, 1)


def test_permanent_errors_are_final_at_once_with_retries_on(
    owner: Any, queued: list[Any], image_server: ImageServer, settings: Any
) -> None:
    from django.core.cache import cache

    settings.FETCH_RETRY_MAX = 3
    cache.clear()
    missing = image_server.base_url + "/gone.jpg"
    page = image_server.add("/page.jpg", b"<html></html>", content_type="image/jpeg")
    request = create(owner, [("1", "A", [missing, page])])
    image_process(request_id=request.pk, image_ids=image_ids(request))
    codes = {i.source_url: (i.status, i.error_code, i.transient_errors) for i in ProductImage.objects.all()}
    assert codes == {
        missing: (ImageStatus.FAILED, "http_404", 0),
        page: (ImageStatus.FAILED, "not_an_image", 0),
    }
    assert image_server.hits["/gone.jpg"] == image_server.hits["/page.jpg"] == 1


def test_transient_errors_fail_the_image_once_the_budget_is_spent(
    owner: Any, queued: list[Any], image_server: ImageServer, settings: Any
) -> None:
    settings.FETCH_RETRY_MAX = 2
    url = image_server.add("/down.jpg", b"", content_type="text/plain", status=502)
    request = create(owner, [("1", "A", [url])])
    for _ in range(3):
        image_process(request_id=request.pk, image_ids=image_ids(request))
        _due_now(request)
        # The origin's pause (its last error) is over too.
        from django.core.cache import cache

        cache.clear()
    image = ProductImage.objects.get(request=request)
    assert (image.status, image.error_code, image.transient_errors, image.attempts) == (
        ImageStatus.FAILED,
        "http_502",
        2,
        1,
    )
    assert image_server.hits["/down.jpg"] == 3


def test_retry_after_sets_the_image_aside_that_long_and_pauses_the_host(
    owner: Any, queued: list[Any], image_server: ImageServer, settings: Any
) -> None:
    from django.core.cache import cache

    from imageproc.pipeline import hosts

    settings.FETCH_RETRY_MAX = 3
    cache.clear()
    limited = image_server.add(
        "/limited.jpg", b"", content_type="text/plain", status=429, headers={"Retry-After": "30"}
    )
    other = image_server.add("/other.jpg", make_image(40, 30))
    request = create(owner, [("1", "A", [limited])])
    image_process(request_id=request.pk, image_ids=image_ids(request))
    image = ProductImage.objects.get(request=request)
    assert image.retry_at >= timezone.now() + timedelta(seconds=28)
    assert 28 < hosts.paused_for(hosts.host_of(other)) <= 30
    # The host's other images wait for the end of the pause without asking it; unspent.
    second = create(owner, [("1", "B", [other])])
    image_process(request_id=second.pk, image_ids=image_ids(second))
    waiting = ProductImage.objects.get(request=second)
    assert (waiting.status, waiting.error_code, waiting.transient_errors) == (ImageStatus.PENDING, "host_busy", 0)
    assert image_server.hits["/other.jpg"] == 0
    cache.clear()


def test_a_host_at_its_limit_sets_images_aside_unspent(
    owner: Any, queued: list[Any], image_server: ImageServer, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imageproc.pipeline import hosts

    settings.FETCH_PER_HOST = 1
    monkeypatch.setattr(hosts, "SLOT_WAIT", 0.2)
    url = image_server.add("/busy.jpg", make_image(40, 30))
    held = hosts.acquire(hosts.host_of(url))  # another worker's download
    try:
        request = create(owner, [("1", "A", [url])])
        image_process(request_id=request.pk, image_ids=image_ids(request))
        image = ProductImage.objects.get(request=request)
        assert (image.status, image.error_code, image.transient_errors, image.attempts) == (
            ImageStatus.PENDING,
            "host_busy",
            0,
            0,
        )
        assert image_server.hits["/busy.jpg"] == 0
    finally:
        hosts.release(held)
    _due_now(request)
    image_process(request_id=request.pk, image_ids=image_ids(request))
    assert ProductImage.objects.get(request=request).status == ImageStatus.DONE


def test_storage_down_is_waited_for_then_set_aside_never_failed(
    owner: Any, queued: list[Any], image_server: ImageServer, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from botocore.exceptions import EndpointConnectionError

    from imageproc.pipeline import transient

    monkeypatch.setattr(transient.time, "sleep", lambda seconds: None)  # the backoff, instantly
    settings.STORAGE_RETRY_SECONDS = 30
    url = image_server.add("/stored.jpg", make_image(60, 40))
    request = create(owner, [("1", "A", [url])])
    save = process.default_storage.save
    outage = {"left": 3}

    def flaky_save(name: str, content: Any, **kwargs: Any) -> str:
        if outage["left"]:
            outage["left"] -= 1
            raise EndpointConnectionError(endpoint_url="http://s3.test")
        return save(name, content, **kwargs)

    monkeypatch.setattr(process.default_storage, "save", flaky_save)
    image_process(request_id=request.pk, image_ids=image_ids(request))
    image = ProductImage.objects.get(request=request)
    assert (image.status, image.attempts) == (ImageStatus.DONE, 1)  # three failures waited out

    # Down for longer than STORAGE_RETRY_SECONDS: set aside, not failed, attempt given back.
    second = create(owner, [("1", "B", [url])])
    outage["left"] = 10**6
    settings.STORAGE_RETRY_SECONDS = 0
    image_process(request_id=second.pk, image_ids=image_ids(second))
    image = ProductImage.objects.get(request=second)
    assert (image.status, image.error_code, image.attempts, image.transient_errors) == (
        ImageStatus.PENDING,
        "storage_unavailable",
        0,
        0,
    )
    assert image.retry_at is not None


def test_a_storage_answer_about_the_request_fails_the_image(
    owner: Any, queued: list[Any], image_server: ImageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from botocore.exceptions import ClientError

    def denied(name: str, content: Any, **kwargs: Any) -> str:
        raise ClientError({"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "PutObject")

    monkeypatch.setattr(process.default_storage, "save", denied)
    url = image_server.add("/denied.jpg", make_image(60, 40))
    request = create(owner, [("1", "A", [url])])
    image_process(request_id=request.pk, image_ids=image_ids(request))
    image = ProductImage.objects.get(request=request)
    assert (image.status, image.error_code) == (ImageStatus.FAILED, "storage_error")


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        pytest.param(lambda: _client_error(503, "ServiceUnavailable"), True, id="503"),
        pytest.param(lambda: _client_error(200, "SlowDown"), True, id="slow-down"),
        pytest.param(lambda: _client_error(500, "InternalError"), True, id="500"),
        pytest.param(lambda: _client_error(403, "AccessDenied"), False, id="403"),
        pytest.param(lambda: _client_error(404, "NoSuchBucket"), False, id="404"),
        pytest.param(lambda: _botocore("ConnectionClosedError", endpoint_url="http://s3"), True, id="reset"),
        pytest.param(lambda: _botocore("EndpointConnectionError", endpoint_url="http://s3"), True, id="refused-s3"),
        pytest.param(lambda: _botocore("ReadTimeoutError", endpoint_url="http://s3"), True, id="read-timeout"),
        pytest.param(lambda: ConnectionRefusedError(), True, id="refused"),
        pytest.param(lambda: OSError(28, "No space left on device"), True, id="disk-full"),
        pytest.param(lambda: PermissionError(13, "Permission denied"), False, id="permission"),
        pytest.param(lambda: ValueError("bad name"), False, id="a-bug"),
    ],
)
def test_storage_errors_that_pass_by_themselves(error: Any, transient: bool) -> None:
    from imageproc.storage import storage_error_is_transient

    assert storage_error_is_transient(error()) is transient


def _client_error(status: int, code: str) -> Exception:
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


def _botocore(name: str, **kwargs: Any) -> Exception:
    import botocore.exceptions

    error: Exception = getattr(botocore.exceptions, name)(**kwargs)
    return error


@pytest.mark.django_db(transaction=True)
def test_database_calls_are_tried_again_after_a_dropped_connection(
    settings: Any, monkeypatch: pytest.MonkeyPatch, no_db_trouble: Any
) -> None:
    from django.db.utils import OperationalError, ProgrammingError

    from imageproc.pipeline import transient

    monkeypatch.setattr(transient.time, "sleep", lambda seconds: None)
    settings.IMAGE_DB_RETRY_SECONDS = 30
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise OperationalError("server closed the connection unexpectedly")
        return "recorded"

    assert transient.with_db_retry(flaky, what="test") == "recorded"
    assert calls["n"] == 3
    assert transient.seconds_since_db_trouble() is not None  # the sweeper will wait a lease
    # Not a connection problem: no second try.
    calls["n"] = 0

    def broken() -> None:
        calls["n"] += 1
        raise ProgrammingError("no such column")

    with pytest.raises(ProgrammingError):
        transient.with_db_retry(broken, what="test")
    assert calls["n"] == 1
    # Out of budget: the last error goes up.
    settings.IMAGE_DB_RETRY_SECONDS = 0
    calls["n"] = 0
    with pytest.raises(OperationalError):
        transient.with_db_retry(flaky, what="test")


def test_dispatch_with_the_broker_down_leaves_its_batches_to_the_sweeper(
    owner: Any, image_server: ImageServer, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    from imageproc.pipeline.sweep import queue_due_images

    def broker_down(*args: Any, **kwargs: Any) -> str:
        raise RedisConnectionError("Connection refused")

    monkeypatch.setattr(dispatch, "async_task", broker_down)
    settings.IMAGE_BATCH_SIZE = 1
    settings.IMAGE_STEAL_SECONDS = 0
    urls = [image_server.add(f"/q{i}.jpg", make_image(40, 30)) for i in range(3)]
    request = create(owner, [("1", "A", urls)])
    # The dispatch task still processes its own batch; the others are due for the sweeper.
    assert tasks.dispatch_request(str(request.pk)) == 3
    images = list(ProductImage.objects.filter(request=request))
    assert sorted(i.status for i in images) == [ImageStatus.DONE, ImageStatus.PENDING, ImageStatus.PENDING]
    assert all(i.queued_at is None and i.retry_at for i in images if i.status == ImageStatus.PENDING)
    queued: list[Any] = []
    monkeypatch.setattr(dispatch, "async_task", lambda *args, **kwargs: queued.append(args))
    assert queue_due_images() == 2  # the broker is back
    assert len(queued) == 2


def test_images_queued_before_the_broker_restarted_are_queued_again(
    owner: Any, queued: list[Any], monkeypatch: pytest.MonkeyPatch, no_db_trouble: Any
) -> None:
    class RestartedRedis:
        """What sweep sees of a Redis broker that started 5 s ago, its queue not empty."""

        class connection:  # stands for the redis client attribute
            @staticmethod
            def info(section: str) -> dict[str, Any]:
                return {"uptime_in_seconds": 5}

        def queue_size(self) -> int:
            return 3

    RestartedRedis.__name__ = "Redis"
    monkeypatch.setattr(sweep_module, "get_broker", RestartedRedis)
    before, after = (create(owner, [("1", n, [f"http://img.example/{n}.jpg"])]) for n in ("a", "b"))
    ProductImage.objects.filter(request=before).update(queued_at=timezone.now() - timedelta(seconds=20))
    ProductImage.objects.filter(request=after).update(queued_at=timezone.now())
    ProcessingRequest.objects.filter(pk__in=[before.pk, after.pk]).update(
        created_at=timezone.now() - timedelta(seconds=30)
    )
    lost = create(owner, [("1", "C", ["http://img.example/c.jpg"])])  # its dispatch task was lost
    ProcessingRequest.objects.filter(pk=lost.pk).update(created_at=timezone.now() - timedelta(seconds=20))
    assert sweep().dispatched == 2
    assert sorted(call[1] for call in queued) == sorted([str(before.pk), str(lost.pk)])


def test_uploads_while_the_database_is_down_answer_503(api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from django.db.utils import OperationalError

    def database_down(**kwargs: Any) -> Any:
        raise OperationalError('connection to server at "127.0.0.1", port 5432 failed: Connection refused')

    monkeypatch.setattr(request_services, "request_create", database_down)
    monkeypatch.setattr("requests_app.api.views.request_create", database_down, raising=False)
    response = api.post("/csv/upload", {"file": _csv_file()}, format="multipart")
    assert response.status_code == 503
    assert response.json() == {
        "error": "service_unavailable",
        "detail": "The database is unavailable at the moment; nothing was stored. Try again in a few seconds.",
    }
    assert response["Retry-After"] == "10"


def test_requests_while_redis_is_down_answer_503(api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    def queue_down(**kwargs: Any) -> Any:
        raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr("requests_app.api.views.request_create", queue_down, raising=False)
    monkeypatch.setattr(request_services, "request_create", queue_down)
    response = api.post("/csv/upload", {"file": _csv_file()}, format="multipart")
    assert response.status_code == 503
    assert response.json()["error"] == "service_unavailable"
    assert "Redis" in response.json()["detail"]


def _csv_file() -> Any:
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile("c.csv", csv_bytes([("1", "A", ["http://img.example/a.jpg"])]), "text/csv")
