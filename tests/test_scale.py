"""The scale-out set-up: S3 storage on a real S3 endpoint (moto's server mode, over HTTP),
PostgreSQL, Redis as broker and cache, and two separate qclusters sharing the work.

Whatever E2E_LANE says, these tests run on PostgreSQL + Redis + S3; they skip without
PostgreSQL or Redis locally and fail without them in CI (REQUIRE_SERVICES=1).
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import redis
import requests
from boto3.s3.transfer import TransferConfig
from django.core.files.base import ContentFile
from PIL import Image

from imageproc.s3 import CSV_CACHE_CONTROL, IMAGE_CACHE_CONTROL, OutputS3Storage
from imageproc.storage import output_url_policy
from tests.conftest import ROOT, ImageServer, Stack, csv_bytes, make_image, start_stack, stop_stack
from tests.lanes import REDIS_URL, S3Bucket

pytestmark = pytest.mark.scale


# --- The S3 backend, in-process against the moto server ---------------------------------------


def _saved(storage: OutputS3Storage, name: str, data: bytes, content_type: str | None) -> str:
    content = ContentFile(data, name=name)
    if content_type:
        content.content_type = content_type  # as the pipeline does for images and the output CSV
    return storage.save(name, content)


def test_s3_objects_get_their_content_type_and_cache_control() -> None:
    bucket = S3Bucket.create()
    storage = OutputS3Storage(**bucket.storage_options())
    jpeg = make_image(64, 48)
    _saved(storage, "outputs/r/a.jpg", jpeg, "image/jpeg")
    _saved(storage, "outputs/r/b.webp", b"RIFF....WEBP", "image/webp")
    _saved(storage, "outputs/r/output.csv", b"S. No.\n1\n", "text/csv; charset=utf-8")
    # Without a content type, the extension decides.
    _saved(storage, "outputs/r/c.jpg", jpeg, None)

    heads = {key: bucket.head(key) for key in bucket.keys()}
    assert {k: h["ContentType"] for k, h in heads.items()} == {
        "outputs/r/a.jpg": "image/jpeg",
        "outputs/r/b.webp": "image/webp",
        "outputs/r/c.jpg": "image/jpeg",
        "outputs/r/output.csv": "text/csv; charset=utf-8",
    }
    assert heads["outputs/r/a.jpg"]["CacheControl"] == IMAGE_CACHE_CONTROL == "public, max-age=31536000, immutable"
    assert heads["outputs/r/b.webp"]["CacheControl"] == IMAGE_CACHE_CONTROL
    # The CSV is rewritten when failed images are retried: never cached without asking.
    assert heads["outputs/r/output.csv"]["CacheControl"] == CSV_CACHE_CONTROL == "no-cache"

    # Saving under the same name again overwrites: one object, never a renamed copy.
    assert _saved(storage, "outputs/r/a.jpg", jpeg, "image/jpeg") == "outputs/r/a.jpg"
    assert len(bucket.keys("outputs/r/")) == 4


def test_upload_threads_share_one_client_and_big_files_go_multipart(settings: Any) -> None:
    bucket = S3Bucket.create()
    storage = OutputS3Storage(**bucket.storage_options(transfer_config=TransferConfig(use_threads=False)))
    images = {f"outputs/r/{n}.jpg": make_image(32 + n, 24) for n in range(12)}
    clients: list[Any] = []

    def save(item: tuple[str, bytes]) -> str:
        clients.append(storage.client)
        return _saved(storage, item[0], item[1], "image/jpeg")

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert sorted(pool.map(save, images.items())) == sorted(images)
    assert len({id(client) for client in clients}) == 1
    # A pooled connection for each upload thread of a worker (urllib3 drops the extra ones).
    assert clients[0].meta.config.max_pool_connections == settings.IMAGE_IO_THREADS > 10
    # Presigning uses it as well: no thread built django-storages' own session and resource.
    assert "X-Amz-Signature=" in storage.url("outputs/r/0.jpg")
    assert getattr(storage._connections, "connection", None) is None
    for key, data in images.items():
        assert bucket.client.get_object(Bucket=bucket.name, Key=key)["Body"].read() == data

    # At the multipart threshold (8 MiB), django-storages' own path takes over.
    big = b"S. No.,Product Name\n" + b"1,x\n" * (8 * 1024 * 1024 // 4)
    assert _saved(storage, "outputs/r/output.csv", big, "text/csv; charset=utf-8") == "outputs/r/output.csv"
    head = bucket.head("outputs/r/output.csv")
    assert head["ContentLength"] == len(big)
    assert head["ContentType"] == "text/csv; charset=utf-8"
    assert head["CacheControl"] == CSV_CACHE_CONTROL
    assert "-" in head["ETag"]  # a multipart upload's ETag names its part count


def test_presigned_urls_are_sigv4_expire_and_serve_the_bytes(settings: Any) -> None:
    bucket = S3Bucket.create()
    options = bucket.storage_options(querystring_expire=3600)
    storage = OutputS3Storage(**options)
    jpeg = make_image(64, 48)
    _saved(storage, "outputs/r/a.jpg", jpeg, "image/jpeg")

    url = storage.url("outputs/r/a.jpg")
    query = parse_qs(urlsplit(url).query)
    assert url.startswith(f"{bucket.endpoint}/{bucket.name}/outputs/r/a.jpg?")
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]  # not the deprecated SigV2
    assert query["X-Amz-Expires"] == ["3600"]
    fetched = requests.get(url, timeout=10)
    assert fetched.status_code == 200
    assert fetched.content == jpeg
    assert fetched.headers["Content-Type"] == "image/jpeg"
    assert fetched.headers["Cache-Control"] == IMAGE_CACHE_CONTROL
    # The bucket itself is private: without the signature, no access.
    assert requests.get(url.split("?")[0], timeout=10).status_code == 403

    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": "imageproc.s3.OutputS3Storage", "OPTIONS": options},
    }
    assert output_url_policy() == {"kind": "presigned", "expires_in": 3600}


def test_public_base_url_gives_permanent_unsigned_urls(settings: Any) -> None:
    bucket = S3Bucket.create(public=True)
    # settings/base.py with S3_PUBLIC_BASE_URL=http://127.0.0.1:PORT/BUCKET
    options = bucket.storage_options(
        querystring_auth=False,
        custom_domain=bucket.public_base_url.split("://", 1)[1],
        url_protocol="http:",
    )
    storage = OutputS3Storage(**options)
    jpeg = make_image(64, 48)
    _saved(storage, "outputs/r/a.jpg", jpeg, "image/jpeg")

    url = storage.url("outputs/r/a.jpg")
    assert url == f"{bucket.public_base_url}/outputs/r/a.jpg"
    fetched = requests.get(url, timeout=10)  # anonymous
    assert fetched.status_code == 200
    assert fetched.content == jpeg

    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": "imageproc.s3.OutputS3Storage", "OPTIONS": options},
    }
    assert output_url_policy() == {"kind": "public", "expires_in": None}


def test_local_storage_urls_are_reported_as_permanent() -> None:
    assert output_url_policy() == {"kind": "local", "expires_in": None}


def _check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "settings.base", **env},
        capture_output=True,
        text=True,
    )


def test_s3_settings_are_checked_at_start_up() -> None:
    bad = _check({"S3_BUCKET": "outputs", "S3_PUBLIC_BASE_URL": "cdn.example.com"})
    assert bad.returncode != 0
    assert "S3_PUBLIC_BASE_URL must start with http:// or https://" in bad.stderr
    too_long = _check({"S3_BUCKET": "outputs", "S3_URL_EXPIRES": str(8 * 24 * 3600)})
    assert too_long.returncode != 0
    assert "S3_URL_EXPIRES must be between 60 and 604800" in too_long.stderr


# --- The whole service on PostgreSQL + Redis + S3 with two qclusters -------------------------------


@pytest.fixture(scope="module")
def scale_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # One image per task and no claiming of more once under way (IMAGE_STEAL_SECONDS=0), so
    # that both clusters get a share of a small request.
    env = {"IMAGE_BATCH_SIZE": "1", "IMAGE_STEAL_SECONDS": "0", "Q_WORKERS": "2"}
    # The image clusters only: these tests count clusters, workers and their stats (the
    # webhooks' own qcluster is tested on this lane by tests/test_webhooks.py).
    s = start_stack(tmp_path_factory.mktemp("scale"), env, lane="scale", clusters=2, webhook_cluster=False)
    yield s
    stop_stack(s)


def test_a_request_is_shared_by_both_clusters_and_lands_in_s3(
    scale_stack: Stack, module_image_server: ImageServer
) -> None:
    bucket = scale_stack.bucket
    assert bucket is not None
    urls = [module_image_server.add(f"/scale/{i}.jpg", make_image(320, 240), delay=0.3) for i in range(12)]
    png = module_image_server.add("/scale/p.png", make_image(200, 100, "PNG", mode="RGBA"), content_type="image/png")
    rows = [(str(i + 1), f"P{i}", [urls[i], urls[(i + 1) % 12]]) for i in range(12)] + [("13", "Png", [png])]
    created = scale_stack.post("/csv/upload", files={"file": ("c.csv", csv_bytes(rows), "text/csv")}).json()
    status = scale_stack.wait_finished(created["request_id"])

    assert status["status"] == "completed"
    assert status["progress"] == {
        "images_total": 25,
        "images_done": 25,
        "images_failed": 0,
        "percent": 100.0,
        "eta_seconds": None,
    }
    assert status["output_urls"] == {"kind": "presigned", "expires_in": 7 * 24 * 3600}
    assert all(module_image_server.hits[f"/scale/{i}.jpg"] == 1 for i in range(12))

    # One object per distinct source URL, plus the output CSV; nothing else.
    prefix = f"outputs/{created['request_id']}/"
    keys = bucket.keys(prefix)
    assert len(keys) == 14
    assert prefix + "output.csv" in keys
    csv_head = bucket.head(prefix + "output.csv")
    assert csv_head["ContentType"] == "text/csv; charset=utf-8"
    assert csv_head["CacheControl"] == "no-cache"
    for key in keys:
        if key.endswith(".jpg"):
            head = bucket.head(key)
            assert (head["ContentType"], head["CacheControl"]) == ("image/jpeg", IMAGE_CACHE_CONTROL)

    # The links handed out are presigned S3 URLs that serve the compressed image.
    first = status["products"][0]["output_image_urls"][0]
    assert first.startswith(f"{bucket.endpoint}/{bucket.name}/{prefix}")
    assert "X-Amz-Signature=" in first
    fetched = requests.get(first, timeout=10)
    assert fetched.status_code == 200
    assert Image.open(io.BytesIO(fetched.content)).size == (320, 240)

    # The stored CSV says what the API's CSV says (the API signs its links afresh).
    stored = bucket.client.get_object(Bucket=bucket.name, Key=prefix + "output.csv")["Body"].read().decode()
    served = scale_stack.get(f"/csv/output/{created['request_id']}").text

    def unsigned(text: str) -> list[list[str]]:
        return [
            [",".join(u.split("?")[0] for u in cell.split(",")) for cell in row]
            for row in csv.reader(io.StringIO(text))
        ]

    assert unsigned(stored) == unsigned(served)
    assert len(unsigned(stored)) == 14

    # Both "machines" did part of the work.
    logs = [p.read_text() for p in sorted(scale_stack.log.parent.glob("qcluster-*.log"))]
    assert len(logs) == 2
    assert all("imageproc.tasks.process_images" in log for log in logs), scale_stack.logs()


def test_health_reports_the_redis_broker_and_both_clusters(scale_stack: Stack) -> None:
    body = requests.get(scale_stack.base_url + "/health/", timeout=10).json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["storage"] == {
        "ok": True,
        "ms": body["checks"]["storage"]["ms"],
        "backend": "OutputS3Storage",
    }
    broker = body["checks"]["broker"]
    assert broker["ok"] is True
    assert broker["type"].startswith("Redis ")
    workers = body["checks"]["workers"]
    assert workers["broker"] == "Redis"
    assert workers["clusters"] == 2
    assert workers["workers"] == 4
    assert sorted(d["pid"] for d in workers["details"]) == sorted(c.pid for c in scale_stack.clusters)


def test_qinfo_reads_both_clusters_from_the_shared_redis(scale_stack: Stack) -> None:
    ids = scale_stack.manage("qinfo", "--ids").split()
    assert len(ids) == 2
    info = scale_stack.manage("qinfo")
    assert "on Redis" in info
    assert "Clusters" in info
    text = "".join(info.split())
    assert "Clusters2Workers4" in text, info


def test_redis_keys_stay_in_the_runs_namespace(scale_stack: Stack) -> None:
    assert scale_stack.scale is not None
    prefix = scale_stack.scale.redis_prefix
    stats = list(redis.Redis.from_url(REDIS_URL).scan_iter(match=f"django_q:{prefix}:cluster:*"))
    assert len(stats) == 2  # one live stat per qcluster, under this run's prefix only
    assert not list(redis.Redis.from_url(REDIS_URL).scan_iter(match="django_q:imageproc:cluster:*"))


def test_the_broker_down_makes_health_fail(tmp_path: Any) -> None:
    # A stack whose Redis URL points at a closed port: web only, no cluster can start.
    from tests.conftest import free_port

    s = start_stack(
        tmp_path,
        {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"},
        lane="scale",
        web_only=True,
        webhook_cluster=False,
    )
    try:
        # No keep-alive: on stop, gunicorn would wait its graceful timeout (30 s) for the
        # connection requests leaves open after a 503.
        response = requests.get(s.base_url + "/health/", timeout=20, headers={"Connection": "close"})
        assert response.status_code == 503
        body = response.json()
        assert body["checks"]["database"]["ok"] is True
        assert body["checks"]["broker"]["ok"] is False
        assert "onnection" in body["checks"]["broker"]["error"]
    finally:
        stop_stack(s)
