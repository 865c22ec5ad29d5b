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
    assert (request.images_done, request.status) == (2, RequestStatus.FINALIZING)


def test_sweep_reruns_a_finalisation_that_died(owner: Any, queued: list[Any], settings: Any) -> None:
    request = create(owner, [("1", "A", ["http://img.example/a.jpg"])])
    long_ago = timezone.now() - timedelta(seconds=settings.IMAGE_STALE_AFTER + 5)
    ProcessingRequest.objects.filter(pk=request.pk).update(status=RequestStatus.FINALIZING, updated_at=long_ago)
    assert sweep().refinalized == 1
    assert queued[-1] == ("imageproc.tasks.finalize_request", str(request.pk))


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
    assert request.status == RequestStatus.FINALIZING
    assert queued[-1] == ("imageproc.tasks.finalize_request", str(request.pk))


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
