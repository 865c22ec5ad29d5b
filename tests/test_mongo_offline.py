"""MongoDB without a server: what the ORM operations we rely on become in MongoDB's query
language, compiled by django-mongodb-backend itself.

Our own service code runs for real against a backend connection whose pymongo collections are
recorders (tests/mongo_recorder.py): the image claim, the counter increments, the finalisation
claim, the status page and the sweeper each must stay ONE conditional `update_many` (atomic per
document, on the document's own fields, in one collection) or one single-collection read. A
change that turns one of them into a read-modify-write, or that reaches across collections,
fails here. The in-process tests run under the SQLite settings' app registry: our models are
identical under both (shared migrations, checked below); only contrib models' ids differ, and
no assertion here depends on them. `migrate` runs under the real MongoDB settings, in a
subprocess; `.ci/run` adds the system checks and `makemigrations --check` under both settings.

Our UUID primary keys are stored in a field named `id` (the backend maps only ObjectIdAutoField
to MongoDB's `_id`), so the filters below name `id`.
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.apps import AppConfig, apps
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.db.models import AutoField, ForeignKey, UUIDField
from django.db.utils import ConnectionHandler
from django.test import override_settings

from settings.mongo import (
    MONGO_APP_CONFIGS,
    MONGO_MIGRATION_MODULES,
    OBJECT_ID_AUTO_FIELD,
    database_name,
    mongo_installed_apps,
    mongo_settings,
)
from settings.mongo_apps import check_mongo_settings
from tests.conftest import ROOT, make_image
from tests.mongo_recorder import OFFLINE_DATABASE_URL, Call, Recorder, attach
from tests.test_mongo_server import with_database

IMAGES = "products_productimage"
PRODUCTS = "products_product"
REQUESTS = "requests_app_processingrequest"
OUR_APPS = ("requests_app", "products", "imageproc")


@pytest.fixture
def mongo(django_db_blocker: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    """connections["default"] is a django-mongodb-backend connection built from our own
    mongo_settings(), recording what it would send to MongoDB."""
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    databases = mongo_settings(OFFLINE_DATABASE_URL, installed_apps=settings.INSTALLED_APPS)["DATABASES"]
    wrapper = ConnectionHandler(databases)["default"]
    recorder = Recorder()
    attach(wrapper, recorder)
    original = connections["default"]
    connections["default"] = wrapper
    try:
        with django_db_blocker.unblock():
            yield recorder
    finally:
        connections["default"] = original
        wrapper.connection.close()  # stops the monitor threads a stray call may have started


@pytest.fixture
def queued(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Tasks the services queue, kept instead of run (the sync cluster would run them here)."""

    from imageproc.pipeline import dispatch, finalize, sweep

    tasks: list[tuple[Any, ...]] = []
    for module in (dispatch, finalize, sweep):
        monkeypatch.setattr(module, "async_task", lambda *args, **kwargs: tasks.append(args))
    return tasks


def conditions(mql: dict[str, Any]) -> list[dict[str, Any]]:
    """The conjuncts of a filter, however Django nested its $and."""
    if list(mql) == ["$and"]:
        return [c for part in mql["$and"] for c in conditions(part)]
    return [mql]


def condition_set(mql: dict[str, Any]) -> list[str]:
    return sorted(json.dumps(c, sort_keys=True, default=str) for c in conditions(mql))


def expect_filter(call: Call, *expected: dict[str, Any]) -> None:
    assert condition_set(call.filter) == condition_set({"$and": list(expected)}), call.filter


def the_set(call: Call) -> dict[str, Any]:
    """The `$set` of an update pipeline; the backend always sends exactly one stage."""
    assert call.method == "update_many", call
    assert isinstance(call.update, list) and len(call.update) == 1 and list(call.update[0]) == ["$set"], call.update
    result: dict[str, Any] = call.update[0]["$set"]
    return result


def increment(field: str, by: int) -> dict[str, Any]:
    """An increment computed by the server from the document's own field: atomic per document."""
    return {"$add": [f"${field}", {"$literal": by}]}


def not_null(field: str) -> dict[str, Any]:
    return {"$and": [{field: {"$exists": True}}, {field: {"$ne": None}}]}


def assert_one_collection(call: Call) -> None:
    if call.method == "aggregate":
        assert not {"$lookup", "$unionWith", "$graphLookup"} & set(call.stages()), call.pipeline


def due(now: dt.datetime) -> dict[str, Any]:
    """Not set aside until after `now`: no retry_at, or one that has come."""
    return {
        "$or": [
            {"$or": [{"retry_at": {"$exists": False}}, {"retry_at": None}]},
            {"$and": [{"retry_at": {"$lte": now}}, not_null("retry_at")]},
        ]
    }


def finalize_claim(request_id: uuid.UUID) -> tuple[dict[str, Any], ...]:
    return (
        {"id": request_id.hex},
        {"status": {"$in": ["pending", "processing"]}},
        {"$expr": {"$eq": ["$images_total", {"$add": ["$images_done", "$images_failed"]}]}},
    )


# --- The pipeline ----------------------------------------------------------------------------


def test_image_claim_is_one_conditional_update_of_the_images(mongo: Recorder, queued: list[Any]) -> None:
    from imageproc.pipeline.process import image_process

    request_id, ids = uuid.uuid4(), [uuid.uuid4(), uuid.uuid4()]
    mongo.answer(IMAGES, "update_many", 0)  # another worker holds them

    image_process(request_id=request_id, image_ids=[str(i) for i in ids])

    claim = mongo.calls[0]
    # Nothing is read first: the claim is the write itself, atomic per image document.
    assert (claim.collection, claim.method) == (IMAGES, "update_many")
    changes = the_set(claim)
    now = changes["claimed_at"]["$literal"]
    assert isinstance(now, dt.datetime)
    # Pending, and not set aside until later (after a transient error).
    expect_filter(claim, {"id": {"$in": [i.hex for i in ids]}}, {"status": "pending"}, due(now))
    assert changes["attempts"] == increment("attempts", 1)
    assert changes["status"] == {"$literal": "processing"}
    token = changes["claim_token"]["$literal"]
    assert len(token) == 32 and int(token, 16) >= 0
    assert changes["lease_until"] == {"$literal": now + dt.timedelta(seconds=settings.IMAGE_LEASE_SECONDS)}
    assert set(changes) == {"status", "claim_token", "claimed_at", "lease_until", "attempts"}
    # What was claimed is read back by its token, from the images alone; here nothing was:
    # only the finalisation is tried, and nobody wins it.
    assert [(c.collection, c.method) for c in mongo.calls] == [
        (IMAGES, "update_many"),
        (IMAGES, "aggregate"),
        (REQUESTS, "update_many"),
    ]
    assert mongo.calls[1].match() == {"claim_token": token}
    assert "$sort" not in mongo.calls[1].stages()
    expect_filter(mongo.calls[2], *finalize_claim(request_id))
    assert queued == []


def test_a_batch_is_single_collection_conditional_writes_and_server_side_counters(
    mongo: Recorder, queued: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole image_process run: one URL twice (stored once, counted twice) and one URL that
    fails. Every write is a conditional update_many on one collection; every counter is an
    $add on the request document's own field; every read stays in one collection."""
    from imageproc.engine.http import FetchError, FetchResult
    from imageproc.pipeline import process as process_module
    from imageproc.pipeline.process import image_process

    photo = make_image(64, 48)

    def fetch(url: str, policy: Any) -> FetchResult:
        if url.endswith("missing.jpg"):
            raise FetchError("http_404", "HTTP 404")
        return FetchResult(data=photo, content_type="image/jpeg", url=url, elapsed=0.01)

    monkeypatch.setattr(process_module, "fetch_image", fetch)
    request_id = uuid.uuid4()
    shoe, shoe_again, missing = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    # Every image update matches the images it names (the claim 3, then done 2 and failed 1,
    # in whichever order the fetches finish).
    mongo.answer(
        IMAGES,
        "update_many",
        *[lambda call: len(next(c for c in conditions(call.filter) if "id" in c)["id"]["$in"])] * 3,
    )
    mongo.answer(REQUESTS, "update_many", 1, 1, 1, 1)  # started; counters; counters; finalisation won
    mongo.answer(REQUESTS, "aggregate", [{"id": request_id.hex, "quality": 50, "output_format": "jpeg"}])
    first_try = {"transient_errors": 0, "attempts": 1}
    mongo.answer(
        IMAGES,
        "aggregate",
        [
            {"id": shoe.hex, "source_url": "http://img.test/shoe.jpg", "source_key": "k-shoe", **first_try},
            {"id": shoe_again.hex, "source_url": "http://img.test/shoe.jpg", "source_key": "k-shoe", **first_try},
            {"id": missing.hex, "source_url": "http://img.test/missing.jpg", "source_key": "k-missing", **first_try},
        ],
    )

    image_process(request_id=str(request_id), image_ids=[str(shoe), str(shoe_again), str(missing)])

    calls = mongo.calls
    assert {c.method for c in calls} == {"update_many", "aggregate"}
    for call in calls:
        assert_one_collection(call)
    token = the_set(calls[0])["claim_token"]["$literal"]

    # The image rows of this batch are read by their claim token, from the images alone
    # (no $sort either: Meta.ordering would join products and requests in for it).
    reads = [c for c in mongo.on(IMAGES) if c.method == "aggregate"]
    (read,) = [c for c in reads if c.match() == {"claim_token": token}]
    assert "$sort" not in read.stages()
    for other in reads:
        if other is not read:  # looking for more pending images of the request to take on
            assert {"request_id": request_id.hex} in conditions(other.match()), other.pipeline

    image_writes = [c for c in mongo.on(IMAGES) if c.method == "update_many"][1:]
    done = next(c for c in image_writes if the_set(c)["status"] == {"$literal": "done"})
    failed = next(c for c in image_writes if the_set(c)["status"] == {"$literal": "failed"})
    # Only the task that holds the claim may record a result.
    expect_filter(done, {"id": {"$in": [shoe.hex, shoe_again.hex]}}, {"claim_token": token}, {"status": "processing"})
    expect_filter(failed, {"id": {"$in": [missing.hex]}}, {"claim_token": token}, {"status": "processing"})
    assert the_set(failed)["error_code"] == {"$literal": "http_404"}
    bytes_out = the_set(done)["bytes_out"]["$literal"]
    assert the_set(done)["bytes_in"] == {"$literal": len(photo)}
    assert 0 < bytes_out

    # Counters: the request's own document, by id only, incremented by the server.
    counters = [c for c in mongo.on(REQUESTS) if c.method == "update_many" and "$expr" not in json.dumps(c.filter)]
    started, *increments = counters
    expect_filter(started, {"id": request_id.hex}, {"status": "pending"})
    assert the_set(started)["status"] == {"$literal": "processing"}
    done_counter = next(c for c in increments if "images_done" in the_set(c))
    failed_counter = next(c for c in increments if "images_failed" in the_set(c))
    for counter in (done_counter, failed_counter):
        assert counter.filter == {"id": request_id.hex}
    assert the_set(done_counter)["images_done"] == increment("images_done", 2)
    assert the_set(done_counter)["bytes_in"] == increment("bytes_in", 2 * len(photo))
    assert the_set(done_counter)["bytes_out"] == increment("bytes_out", 2 * bytes_out)
    assert set(the_set(done_counter)) == {"images_done", "bytes_in", "bytes_out", "updated_at"}
    assert the_set(failed_counter)["images_failed"] == increment("images_failed", 1)
    assert set(the_set(failed_counter)) == {"images_failed", "updated_at"}
    # Each counter follows the image update it counts.
    assert calls.index(done_counter) == calls.index(done) + 1
    assert calls.index(failed_counter) == calls.index(failed) + 1

    # Last, the finalisation claim, won here; the task that won finalises at once (nothing
    # queued): it reads the request back in `finalizing`, from the requests alone.
    claim, read = calls[-2:]
    assert (claim.collection, claim.method) == (REQUESTS, "update_many")
    expect_filter(claim, *finalize_claim(request_id))
    assert the_set(claim)["status"] == {"$literal": "finalizing"}
    assert (read.collection, read.method) == (REQUESTS, "aggregate")
    assert_one_collection(read)
    assert read.match() == {"$and": [{"id": request_id.hex}, {"status": "finalizing"}]}
    assert queued == []


def test_finalisation_claim_compares_the_counters_inside_the_document(mongo: Recorder, queued: list[Any]) -> None:
    from imageproc.pipeline.finalize import request_try_finalize

    request_id = uuid.uuid4()
    mongo.answer(REQUESTS, "update_many", 1, 0)

    assert request_try_finalize(request_id=request_id) is True
    assert request_try_finalize(request_id=request_id) is False

    first, second = mongo.calls
    for call in (first, second):
        assert (call.collection, call.method) == (REQUESTS, "update_many")
        expect_filter(call, *finalize_claim(request_id))
        assert set(the_set(call)) == {"status", "updated_at"}
    assert queued == [("imageproc.tasks.finalize_request", str(request_id))]


def test_sweeper_reads_one_collection_at_a_time_and_writes_conditionally(
    mongo: Recorder, queued: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from imageproc.pipeline import sweep as sweep_module
    from imageproc.pipeline import transient
    from imageproc.pipeline.sweep import sweep

    class EmptyBroker:
        def queue_size(self) -> int:
            return 0

    monkeypatch.setattr(sweep_module, "get_broker", EmptyBroker)
    monkeypatch.setattr(transient, "seconds_since_db_trouble", lambda: None)
    # The webhook sweep has its own test below; this one is about images and requests.
    monkeypatch.setattr(sweep_module, "webhook_sweep", lambda **kwargs: 0)
    now = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)
    naive = now.replace(tzinfo=None)
    stale_before = (now - dt.timedelta(seconds=settings.IMAGE_STALE_AFTER)).replace(tzinfo=None)
    quiet_before = (now - dt.timedelta(seconds=settings.IMAGE_ORPHAN_AFTER)).replace(tzinfo=None)
    crashed, hopeless, aside, orphan = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    r_stale, r_aside, r_orphan, r_quiet, r_finalizing = (uuid.uuid4() for _ in range(5))
    mongo.answer(
        IMAGES,
        "aggregate",
        [  # claims whose lease ran out
            {"request_id": r_stale.hex, "id": crashed.hex, "attempts": 1, "claim_token": "t-crashed"},
            {
                "request_id": r_stale.hex,
                "id": hopeless.hex,
                "attempts": settings.IMAGE_MAX_ATTEMPTS,
                "claim_token": "t-x",
            },
        ],
        [{"request_id": r_aside.hex, "id": aside.hex}],  # set aside, due now
        [{"id": aside.hex, "source_key": "k"}],  # images_dispatch's pending images
        [{"request_id": r_orphan.hex, "id": orphan.hex}],  # queued long ago, the broker empty
        [{"id": orphan.hex, "source_key": "k"}],  # images_dispatch's pending images
        [],  # requests whose dispatch never ran
        [{"status": "done", "n": 2}, {"status": "failed", "n": 1}],  # _reconcile's count
    )
    mongo.answer(IMAGES, "update_many", 1, 1, 1, 1)  # reset; gave up; queued_at; queued_at
    mongo.answer(
        REQUESTS,
        "aggregate",
        [{"id": r_quiet.hex, "images_total": 3, "images_done": 1, "images_failed": 0}],
        [{"id": r_finalizing.hex}],
        [],  # request_finalize: someone else finished it meanwhile
    )
    # counters; the given-up image's request tries its finalisation (lost: one image is
    # still out); reconcile; the quiet request's finalisation (lost: another sweep's);
    # the dead finalisation claimed for a run here
    mongo.answer(REQUESTS, "update_many", 1, 0, 1, 0, 1)

    report = sweep(now=now)

    assert (report.reset, report.gave_up, report.reconciled, report.refinalized, report.errors) == (1, 1, 1, 1, 0)
    for call in mongo.calls:
        assert call.method in ("aggregate", "update_many"), call
        assert_one_collection(call)
    reads = [c for c in mongo.calls if c.method == "aggregate"]
    # (No request has images whose dispatch never ran: the requests are not read for them.)
    stale, due, due_pending, lost, lost_pending, fresh, quiet, counted, finalizing, final_read = reads
    assert {c.collection for c in (stale, due, due_pending, lost, lost_pending, fresh, counted)} == {IMAGES}
    assert {c.collection for c in (quiet, finalizing, final_read)} == {REQUESTS}
    assert condition_set(stale.match()) == condition_set(
        {
            "$and": [
                {
                    "$or": [
                        {"$and": [{"lease_until": {"$lt": naive}}, not_null("lease_until")]},
                        {
                            "$and": [
                                {"$and": [{"claimed_at": {"$lt": stale_before}}, not_null("claimed_at")]},
                                {"$or": [{"lease_until": {"$exists": False}}, {"lease_until": None}]},
                            ]
                        },
                    ]
                },
                {"status": "processing"},
            ]
        }
    )
    assert {"status": "pending"} in conditions(due.match())
    assert {"status": "pending"} in conditions(lost.match())
    assert "$group" in fresh.stages()  # distinct request ids, grouped by the server
    assert conditions(counted.match()) == [{"request_id": r_quiet.hex}]
    assert "$group" in counted.stages()
    assert condition_set(quiet.match()) == condition_set(
        {
            "$and": [
                {"status": {"$in": ["pending", "processing"]}},
                {"updated_at": {"$lt": quiet_before}},
                not_null("updated_at"),
            ]
        }
    )

    writes = [c for c in mongo.calls if c.method == "update_many"]
    reset, gave_up, requeued_aside, requeued_orphan = (c for c in writes if c.collection == IMAGES)
    expect_filter(gave_up, {"id": {"$in": [hopeless.hex]}}, {"claim_token": "t-x"}, {"status": "processing"})
    assert the_set(gave_up)["error_code"] == {"$literal": "too_many_attempts"}
    expect_filter(reset, {"id": crashed.hex}, {"claim_token": "t-crashed"}, {"status": "processing"})
    assert the_set(reset)["status"] == {"$literal": "pending"}
    assert the_set(reset)["lease_until"] == {"$literal": None}
    expect_filter(requeued_aside, {"id": {"$in": [aside.hex]}}, {"status": "pending"})
    expect_filter(requeued_orphan, {"id": {"$in": [orphan.hex]}}, {"status": "pending"})
    failed_counter, stale_finalize, reconciled, finalize, rerun = (c for c in writes if c.collection == REQUESTS)
    assert failed_counter.filter == {"id": r_stale.hex}
    expect_filter(stale_finalize, *finalize_claim(r_stale))
    assert the_set(failed_counter)["images_failed"] == increment("images_failed", 1)
    assert reconciled.filter == {"id": r_quiet.hex}
    assert the_set(reconciled) == {"images_done": {"$literal": 2}, "images_failed": {"$literal": 1}}
    expect_filter(finalize, *finalize_claim(r_quiet))
    assert {"id": r_finalizing.hex} in conditions(rerun.filter)
    assert {"status": "finalizing"} in conditions(rerun.filter)
    # Finalisations run in the sweep itself, not through the broker (it may be what failed).
    assert [task[0] for task in queued] == ["imageproc.tasks.process_images"] * 3


def test_webhook_sweep_compiles_for_mongodb(mongo: Recorder) -> None:
    """The webhook part of the sweeper issues only operations the backend supports."""
    from requests_app.services.webhook_sweep import webhook_sweep

    webhook_sweep(now=dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    assert mongo.calls
    for call in mongo.calls:
        assert call.method in ("aggregate", "update_many", "insert_many"), call


# --- The status page -----------------------------------------------------------------------------


def test_status_page_reads_products_by_position_range_and_images_by_product(mongo: Recorder) -> None:
    from django.contrib.auth import get_user_model
    from rest_framework.test import APIRequestFactory, force_authenticate

    from requests_app.api.views import ProcessingRequestViewSet

    user = get_user_model()(pk=7, username="acme")
    request_id, product_ids = uuid.uuid4(), [uuid.uuid4(), uuid.uuid4()]
    created = dt.datetime(2030, 1, 1, 12, 0)
    mongo.answer(
        REQUESTS,
        "aggregate",
        [
            {
                "id": request_id.hex,
                "owner_id": 7,
                "status": "processing",
                "products_total": 102,
                "images_total": 204,
                "images_done": 1,
                "images_failed": 1,
                "bytes_in": 1000,
                "bytes_out": 400,
                "created_at": created,
                "updated_at": created,
                "started_at": created,
                "completed_at": None,
            }
        ],
    )
    mongo.answer(
        PRODUCTS,
        "aggregate",
        [
            {"id": product_ids[0].hex, "position": 100, "serial_number": "101", "product_name": "Shoe"},
            {"id": product_ids[1].hex, "position": 101, "serial_number": "102", "product_name": "Hat"},
        ],
    )
    image = {"error_code": "", "error_message": "", "output_name": "", "position": 0}
    mongo.answer(
        IMAGES,
        "aggregate",
        [
            {**image, "product_id": product_ids[0].hex, "source_url": "http://img.test/a.jpg", "status": "pending"},
            {**image, "product_id": product_ids[1].hex, "source_url": "http://img.test/b.jpg", "status": "failed"},
        ],
    )
    http = APIRequestFactory().get(f"/csv/status/{request_id}?page=2")
    force_authenticate(http, user=user)

    response = ProcessingRequestViewSet.as_view({"get": "status"})(http, pk=str(request_id))

    assert response.status_code == 200, response.data
    assert [p["serial_number"] for p in response.data["products"]] == ["101", "102"]
    assert response.data["products"][0]["input_image_urls"] == ["http://img.test/a.jpg"]
    assert [p["status"] for p in response.data["products"]] == ["pending", "failed"]
    assert response.data["progress"]["images_done"] == 1
    request_read, products_read, images_read = mongo.calls
    for call in mongo.calls:
        assert call.method == "aggregate"
        assert_one_collection(call)
    assert request_read.collection == REQUESTS
    assert condition_set(request_read.match()) == condition_set({"$and": [{"id": request_id.hex}, {"owner_id": 7}]})
    # Page 2 is an index range on (request_id, position), not a $skip over the first page.
    assert products_read.collection == PRODUCTS
    assert condition_set(products_read.match()) == condition_set(
        {
            "$and": [
                {"request_id": request_id.hex},
                {"position": {"$gte": 100}},
                {"position": {"$lt": 200}},
                not_null("position"),
            ]
        }
    )
    assert "$skip" not in products_read.stages()
    assert list(products_read.pipeline[-1]["$sort"].items()) == [("position", 1)]
    assert images_read.collection == IMAGES
    assert images_read.match() == {"product_id": {"$in": tuple(p.hex for p in product_ids)}}
    assert list(images_read.pipeline[-1]["$sort"].items()) == [("product_id", 1), ("position", 1)]


# --- Settings, migrations, models ------------------------------------------------------------------


def test_mongo_settings_select_the_backend_apps_and_migrations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://cache.internal:6379/0")
    url = "mongodb://app:s3cret@db1.internal,db2.internal/catalogue?replicaSet=rs0&authSource=admin"
    base_apps = ["django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes", "django_q", "products"]

    result = mongo_settings(url, installed_apps=base_apps)

    assert result["DATABASES"] == {"default": {"ENGINE": "django_mongodb_backend", "HOST": url, "NAME": "catalogue"}}
    assert result["DEFAULT_AUTO_FIELD"] == OBJECT_ID_AUTO_FIELD
    assert result["INSTALLED_APPS"] == [
        "settings.mongo_apps.MongoAdminConfig",
        "settings.mongo_apps.MongoAuthConfig",
        "settings.mongo_apps.MongoContentTypesConfig",
        "settings.mongo_apps.MongoDjangoQConfig",
        "products",
    ]
    assert result["MIGRATION_MODULES"] == MONGO_MIGRATION_MODULES
    for package in MONGO_MIGRATION_MODULES.values():
        assert (ROOT / package.replace(".", "/") / "0001_initial.py").is_file(), package


def test_mongo_settings_need_redis_and_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    with pytest.raises(ImproperlyConfigured, match="REDIS_URL"):
        mongo_settings("mongodb://db.internal/x", installed_apps=list(MONGO_APP_CONFIGS))


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("mongodb://localhost", "imageproc"),
        ("mongodb://localhost:27017/", "imageproc"),
        ("mongodb://u:p@h1:1,h2:2/shop?replicaSet=rs0", "shop"),
        # No DNS query at settings time: this host does not exist.
        ("mongodb+srv://cluster0.does-not-exist.invalid/prod?retryWrites=true", "prod"),
    ],
)
def test_database_name_comes_from_the_url(url: str, name: str) -> None:
    assert database_name(url) == name


@pytest.mark.parametrize("url", ["mongodb:///db", "mongodb://h/bad.name", "mongodb://h/a b", "postgres://h/db"])
def test_unusable_mongodb_urls_fail_loudly(url: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL"):
        database_name(url)


def test_mongo_installed_apps_refuse_a_list_without_the_apps_to_replace() -> None:
    with pytest.raises(ImproperlyConfigured, match="MongoDjangoQConfig"):
        mongo_installed_apps(["django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes"])


def test_settings_check_refuses_the_database_cache_and_the_orm_broker() -> None:
    database_cache = {"default": {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "t"}}
    redis_cache = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": "redis://x"}}
    with override_settings(CACHES=database_cache, Q_CLUSTER={"name": "x", "orm": "default"}):
        assert sorted(e.id for e in check_mongo_settings()) == ["imageproc.mongo.E001", "imageproc.mongo.E002"]
    with override_settings(CACHES=redis_cache, Q_CLUSTER={"name": "x", "redis": "redis://x"}):
        assert check_mongo_settings() == []


def test_our_models_have_no_autofield_and_our_apps_no_default_auto_field() -> None:
    for label in OUR_APPS:
        config = apps.get_app_config(label)
        # An app-level default_auto_field would put an AutoField into our shared migrations.
        assert type(config).default_auto_field is AppConfig.default_auto_field, label
        for model in config.get_models(include_auto_created=True):
            assert isinstance(model._meta.pk, UUIDField), model
            for field in model._meta.get_fields(include_hidden=True):
                assert not isinstance(field, AutoField), (model, field)
                if field.many_to_many and not field.auto_created:
                    # An implicit through table has an AutoField id: use explicit through models.
                    assert not field.remote_field.through._meta.auto_created, (model, field)


def test_no_serializer_of_ours_exposes_contrib_model_ids() -> None:
    """DRF maps ObjectIdAutoField to IntegerField: serializing a User or Group id crashes on
    MongoDB. None of our serializers may touch one (or declare it as a CharField)."""
    from rest_framework import serializers

    import requests_app.api.serializers  # noqa: F401  (defines the serializers)

    def subclasses(cls: type) -> Iterator[type]:
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    contrib = {"auth", "contenttypes", "admin", "sessions", "django_q"}
    checked = 0
    for serializer in subclasses(serializers.ModelSerializer):
        if not serializer.__module__.startswith(OUR_APPS):
            continue
        checked += 1
        model = serializer.Meta.model
        assert model._meta.app_label not in contrib, serializer
        for name, field in serializer().fields.items():
            if isinstance(field, serializers.RelatedField | serializers.ManyRelatedField):
                target = getattr(field, "queryset", None)
                assert target is None or target.model._meta.app_label not in contrib, (serializer, name)
    assert checked >= 1


def test_admin_search_fields_use_no_pattern_lookup_on_ids() -> None:
    """Pattern lookups (icontains, istartswith, iexact) on UUIDs, ObjectIds and foreign keys
    do not work on MongoDB."""
    from django.contrib import admin

    pattern = {"": "icontains", "^": "istartswith", "=": "iexact", "@": "search"}
    for model, model_admin in admin.site._registry.items():
        for entry in model_admin.get_search_fields(None):  # type: ignore[arg-type]
            lookup = pattern.get(entry[:1], "icontains")
            path = entry.lstrip("^=@").split("__")
            if path[-1] in ("exact", "in"):
                lookup = path.pop()
            opts, field = model._meta, None
            for part in path:
                field = opts.get_field(part)
                if field.is_relation and part != path[-1]:
                    opts = field.related_model._meta
            assert field is not None
            is_id = (
                isinstance(field, UUIDField | AutoField | ForeignKey) or field.get_internal_type() == "ObjectIdField"
            )
            assert not (is_id and lookup not in ("exact", "in")), f"{model_admin}: search_fields {entry!r}"


FORBIDDEN_CALLS = {"select_for_update", "prefetch_related", "raw", "extra", "Now", "CheckConstraint"}


def test_our_code_uses_nothing_the_backend_lacks() -> None:
    """docs/mongodb.md: no select_for_update (a no-op there), prefetch_related, raw/extra,
    Now(), check constraints or db_default in our apps (migrations included)."""
    found = []
    for label in OUR_APPS:
        for path in sorted((ROOT / label).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call):
                    func = node.func
                    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                    # `.raw(` on a queryset or manager; Pillow/HTTP objects have no `raw()` calls here.
                    if name in FORBIDDEN_CALLS:
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}()")
                    if any(k.arg == "db_default" for k in node.keywords):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno} db_default=")
    assert found == []


def test_the_health_check_pings_mongodb_every_time(mongo: Recorder, settings: Any) -> None:
    """On MongoDB, ensure_connection() succeeds without a server once a client exists; the
    health check must ask the server. Here nothing listens: the database check fails fast."""
    from imageproc import health

    settings.MONGODB = True
    result = health._check(health._database)
    assert result["ok"] is False
    assert "ServerSelectionTimeoutError" in result["error"]


def _mongo_env(tmp_path: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "settings.base",
        "DATABASE_URL": OFFLINE_DATABASE_URL,
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "VAR_DIR": str(tmp_path),
    }
    env.pop("PYTEST_XDIST_WORKER", None)
    return env


def test_migrate_under_the_mongodb_settings_creates_every_collection_and_index(tmp_path: Path) -> None:
    """`migrate` run against the recorder, with the real MongoDB settings and app registry:
    every migration (ours, shared with SQL, and mongo_migrations/) translates to MongoDB
    operations the backend supports, and the unique indexes ignore documents without a key."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.mongo_recorder"],
        cwd=ROOT,
        env=_mongo_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    expected = {
        model._meta.db_table
        for label in (*OUR_APPS, "auth", "contenttypes", "admin", "sessions", "django_q")
        for model in apps.get_app_config(label).get_models(include_auto_created=True)
        if not model._meta.proxy
    }
    assert expected <= set(report["collections"])
    indexes = {doc["name"]: (table, doc) for table, docs in report["indexes_all"] for doc in docs}
    table, idempotency = indexes["request_unique_idempotency_key"]
    assert table == REQUESTS
    assert idempotency["unique"] is True
    assert idempotency["key"] == {"owner_id": 1, "idempotency_key": 1}
    # Requests without a key (null) are not indexed, so they never collide; the owner is an ObjectId.
    assert idempotency["partialFilterExpression"] == {
        "owner_id": {"$type": "objectId"},
        "idempotency_key": {"$type": "string"},
    }
    table, position = indexes["product_unique_position"]
    assert (table, position["unique"], position["key"]) == (PRODUCTS, True, {"request_id": 1, "position": 1})
    for name in ("image_request_status", "image_status_claimed", "image_claim_token", "request_status_updated"):
        assert name in indexes, name
    assert set(report["methods"]) <= {
        "aggregate",
        "create_collection",
        "create_indexes",
        "insert_many",
        "list_collections",
        "update_many",
    }


def test_the_server_lane_names_its_own_database_and_keeps_the_uri_options() -> None:
    assert with_database("mongodb://h:27017/?replicaSet=rs0", "x") == "mongodb://h:27017/x?replicaSet=rs0"
    assert with_database("mongodb://u:p@h/app", "x") == "mongodb://u:p@h/x?authSource=app"
    assert with_database("mongodb+srv://u:p@c.example.net", "x") == "mongodb+srv://u:p@c.example.net/x?authSource=admin"
    assert with_database("mongodb://u:p@h/?authSource=ops&tls=true", "x") == "mongodb://u:p@h/x?authSource=ops&tls=true"
