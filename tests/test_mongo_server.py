"""The end-to-end suite against a real MongoDB: `MONGODB_URI=mongodb://… make test-mongo`.

Skipped unless MONGODB_URI is set (no MongoDB server can be installed on our machines; the
offline proofs are tests/test_mongo_offline.py). With it set, this module:
- checks the server first and fails with what is wrong: unreachable, older than 6.0, or Redis
  (django-q2's broker with MongoDB, REDIS_URL or redis://127.0.0.1:6379/0) not answering;
- runs the whole service (`manage.py migrate`, then `serve`: gunicorn + qcluster) on a
  throwaway database named imageproc_e2e_<random> on that server, dropped afterwards, with
  its own Redis key prefix, deleted afterwards;
- runs every scenario of tests/test_e2e.py against it, then MongoDB-specific checks: the
  documents and indexes as stored, idempotency keys, the sweeper and the admin.
"""

from __future__ import annotations

import inspect
import os
import re
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests import test_e2e
from tests.conftest import ImageServer, Stack, csv_bytes, make_image, start_stack, stop_stack

MONGODB_URI = os.environ.get("MONGODB_URI", "").strip()
REDIS_URL = os.environ.get("REDIS_URL", "").strip() or "redis://127.0.0.1:6379/0"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not MONGODB_URI,
        reason="MONGODB_URI is not set: the MongoDB lane needs a MongoDB 6.0+ server, e.g. "
        "MONGODB_URI='mongodb://127.0.0.1:27017/?replicaSet=rs0' make test-mongo",
    ),
]

# Every end-to-end scenario that runs on the `stack` fixture, run here on MongoDB's stack.
for _name, _test in vars(test_e2e).items():
    if _name.startswith("test_") and callable(_test) and "stack" in inspect.signature(_test).parameters:
        globals()[_name] = _test


def with_database(uri: str, name: str) -> str:
    """`uri` naming database `name`. When the URI has credentials and no authSource, the
    database it named (or admin) stays the one they authenticate against."""
    scheme, _, rest = uri.partition("://")
    rest, _, query = rest.partition("?")
    hosts, _, path = rest.partition("/")
    if "@" in hosts and "authsource=" not in query.lower():
        query = "&".join(filter(None, [query, f"authSource={path or 'admin'}"]))
    return f"{scheme}://{hosts}/{name}" + (f"?{query}" if query else "")


@dataclass
class MongoRun:
    uri: str
    database: Any  # pymongo Database of this run
    version: str
    topology: str
    redis_prefix: str


@pytest.fixture(scope="module")
def mongo_run() -> Iterator[MongoRun]:
    import redis
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    try:
        client: Any = MongoClient(MONGODB_URI, serverSelectionTimeoutMS=5000)
        info = client.server_info()
        hello = client.admin.command("hello")
    except PyMongoError as exc:
        pytest.fail(f"MONGODB_URI is set but MongoDB did not answer: {type(exc).__name__}: {exc}", pytrace=False)
    if tuple(info["versionArray"][:2]) < (6, 0):
        pytest.fail(
            f"MongoDB {info['version']} at MONGODB_URI: django-mongodb-backend 5.2 needs 6.0, 7.0 or 8.0", pytrace=False
        )
    if "setName" in hello:
        topology = f"replica set {hello['setName']}"
    else:
        topology = "sharded (mongos)" if hello.get("msg") == "isdbgrid" else "standalone"
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"Redis at {REDIS_URL} did not answer ({exc}): with MongoDB, django-q2 uses the Redis broker", pytrace=False
        )
    name = f"imageproc_e2e_{secrets.token_hex(4)}"
    run = MongoRun(with_database(MONGODB_URI, name), client[name], info["version"], topology, f"imageproc-{name}")
    print(f"\nMongoDB {run.version}, {run.topology}; database {name}")
    try:
        yield run
    finally:
        client.drop_database(name)
        client.close()
        cache = redis.Redis.from_url(REDIS_URL)
        keys = list(cache.scan_iter(match=f"*{run.redis_prefix}*", count=1000))
        if keys:
            cache.delete(*keys)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, mongo_run: MongoRun) -> Iterator[Stack]:
    """The stack of tests/conftest.py (local files, `serve` with its own qcluster) on MongoDB."""
    env = {"DATABASE_URL": mongo_run.uri, "REDIS_URL": REDIS_URL, "REDIS_KEY_PREFIX": mongo_run.redis_prefix}
    try:
        s = start_stack(tmp_path_factory.mktemp("mongo-stack"), env, lane="sqlite")
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"`{' '.join(exc.cmd[1:])}` failed on MongoDB:\n{(exc.stderr or '')[-4000:]}", pytrace=False)
    yield s
    stop_stack(s)


def _upload(stack: Stack, rows: list[tuple[str, str, list[str]]], **headers: str) -> requests.Response:
    return requests.post(
        stack.base_url + "/csv/upload",
        headers={"Authorization": f"Bearer {stack.api_key}", **headers},
        files={"file": ("catalogue.csv", csv_bytes(rows), "text/csv")},
        timeout=60,
    )


def test_documents_and_indexes_as_stored(stack: Stack, mongo_run: MongoRun, module_image_server: ImageServer) -> None:
    a = module_image_server.add("/mongo/a.jpg", make_image(320, 240))
    b = module_image_server.add("/mongo/b.jpg", make_image(200, 100))
    missing = module_image_server.base_url + "/mongo/missing.jpg"
    response = _upload(stack, [("1", "Shoe", [a, b]), ("2", "Hat", [a, missing])])
    assert response.status_code == 202, response.text
    request_id = response.json()["request_id"]
    assert stack.wait_finished(request_id)["status"] == "completed_with_errors"

    db = mongo_run.database
    key = request_id.replace("-", "")  # UUIDs are stored as 32 hex digits
    request = db.requests_app_processingrequest.find_one({"id": key})
    assert request is not None, "the request is not stored under its UUID's hex"
    counters = {k: request[k] for k in ("status", "images_total", "images_done", "images_failed")}
    assert counters == {"status": "completed_with_errors", "images_total": 4, "images_done": 3, "images_failed": 1}
    assert request["bytes_out"] < request["bytes_in"]
    images = list(db.products_productimage.find({"request_id": key}))
    assert sorted(i["status"] for i in images) == ["done", "done", "done", "failed"]
    assert all(i["attempts"] == 1 and len(i["claim_token"]) == 32 for i in images)
    assert db.products_product.count_documents({"request_id": key}) == 2

    indexes = db.requests_app_processingrequest.index_information()
    idempotency = indexes["request_unique_idempotency_key"]
    assert idempotency["unique"] is True
    assert idempotency["partialFilterExpression"] == {
        "owner_id": {"$type": "objectId"},
        "idempotency_key": {"$type": "string"},
    }
    assert "product_unique_position" in db.products_product.index_information()
    assert {"image_claim_token", "image_status_claimed"} <= set(db.products_productimage.index_information())


def test_idempotency_keys_on_mongodb(stack: Stack, module_image_server: ImageServer) -> None:
    url = module_image_server.add("/mongo/idem.jpg", make_image(64, 48))
    rows = [("1", "Idem", [url])]
    first = _upload(stack, rows, **{"Idempotency-Key": "order-42"})
    again = _upload(stack, rows, **{"Idempotency-Key": "order-42"})
    assert (first.status_code, again.status_code) == (202, 200), again.text
    assert first.json()["request_id"] == again.json()["request_id"]
    # No key is NULL: the unique index leaves those documents out, so they never collide.
    plain = [_upload(stack, rows) for _ in range(2)]
    assert [r.status_code for r in plain] == [202, 202]
    assert plain[0].json()["request_id"] != plain[1].json()["request_id"]
    for response in (first, *plain):
        stack.wait_finished(response.json()["request_id"])


def _manage(stack: Stack, *args: str) -> str:
    try:
        return stack.manage(*args)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"`manage.py {' '.join(args)}` failed on MongoDB:\n{(exc.stderr or '')[-4000:]}", pytrace=False)


def _admin_session(stack: Stack) -> requests.Session:
    _manage(stack, "ensure_admin")
    text = (Path(stack.env["VAR_DIR"]) / "admin-credentials.txt").read_text()
    password = re.search(r"password: (\S+)", text)
    assert password, text
    session = requests.Session()
    login = stack.base_url + "/admin/login/"
    session.get(login, timeout=30)
    answer = session.post(
        login + "?next=/admin/",
        data={
            "username": "admin",
            "password": password.group(1),
            "csrfmiddlewaretoken": session.cookies["csrftoken"],
            "next": "/admin/",
        },
        headers={"Referer": login},
        timeout=30,
    )
    assert answer.status_code == 200 and answer.url.endswith("/admin/"), answer.text[-2000:]
    return session


def test_sweeper_and_admin_on_mongodb(stack: Stack) -> None:
    _manage(stack, "sweep")  # every query of the sweeper, on the server

    session = _admin_session(stack)
    for path in (
        "/admin/",
        "/admin/requests_app/processingrequest/",
        "/admin/requests_app/processingrequest/?q=catalogue",
        "/admin/products/product/?q=Shoe",
        "/admin/products/productimage/",
        "/admin/django_q/schedule/",
        "/admin/auth/user/",
    ):
        page = session.get(stack.base_url + path, timeout=30)
        assert page.status_code == 200, f"{path}: {page.status_code}\n{page.text[-2000:]}"
    # Contrib models have ObjectId primary keys on MongoDB: they must work in admin URLs.
    users = session.get(stack.base_url + "/admin/auth/user/", timeout=30).text
    user_ids = re.findall(r"/admin/auth/user/([0-9a-f]{24})/change/", users)
    assert user_ids, "no ObjectId in the user changelist's links"
    change = session.get(f"{stack.base_url}/admin/auth/user/{user_ids[0]}/change/", timeout=30)
    assert change.status_code == 200, change.text[-2000:]
    request_links = re.findall(
        r"/admin/requests_app/processingrequest/([0-9a-f-]{36})/change/",
        session.get(stack.base_url + "/admin/requests_app/processingrequest/", timeout=30).text,
    )
    assert request_links, "no request in the admin after the uploads"
    for path in (
        f"/admin/requests_app/processingrequest/{request_links[0]}/change/",
        f"/admin/products/productimage/?q={request_links[0]}",  # UUIDs are searched exactly, not by pattern
    ):
        page = session.get(stack.base_url + path, timeout=30)
        assert page.status_code == 200, f"{path}: {page.status_code}\n{page.text[-2000:]}"
