"""The client API in-process: auth, ownership, idempotency, every error answer, and a whole
request processed synchronously (Q_CLUSTER sync in the test settings)."""

from __future__ import annotations

import csv
import io
import re
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
from django.contrib.auth.models import User
from django.core.files.storage import default_storage
from django.test import Client
from rest_framework.test import APIClient

from products.models import ImageStatus, Product, ProductImage
from requests_app.models import ApiKey, ProcessingRequest
from requests_app.services.clients import api_client_create, api_key_create, api_key_revoke
from tests.conftest import ImageServer, csv_bytes, make_image

pytestmark = pytest.mark.django_db(transaction=True)


def upload(client: APIClient, content: bytes, **extra: Any) -> Any:
    data = {"file": io.BytesIO(content), **extra.pop("data", {})}
    data["file"].name = "catalogue.csv"
    return client.post("/csv/upload", data, format="multipart", **extra)


def test_no_credentials_is_401(client: Any) -> None:
    for path in ("/csv/requests", "/csv/upload"):
        response = APIClient().get(path) if path.endswith("requests") else APIClient().post(path)
        assert response.status_code == 401
        assert response["WWW-Authenticate"] == "Bearer"


def test_wrong_or_revoked_key_is_401(api: APIClient, api_key: str) -> None:
    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION="Bearer ipk_deadbeef_nope")
    assert bad.get("/csv/requests").status_code == 401
    assert api.get("/csv/requests").status_code == 200
    api_key_revoke(prefix=api_key.split("_")[1])
    assert api.get("/csv/requests").status_code == 401


def test_keys_are_stored_hashed(api_key: str) -> None:
    key = ApiKey.objects.get()
    assert api_key not in (key.key_hash, key.prefix)
    assert key.key_hash == ApiKey.hash(api_key)
    assert api_key.startswith(f"ipk_{key.prefix}_")


def test_upload_processes_every_image_and_reports_it(api: APIClient, image_server: ImageServer) -> None:
    a = image_server.add("/a.jpg", make_image(640, 480))
    b = image_server.add("/b.png", make_image(320, 240, "PNG", mode="RGBA"), content_type="image/png")
    response = upload(api, csv_bytes([("1", "Shoe", [a, b]), ("2", "Hat", [a])]))
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["products"] == 2
    assert body["images"] == 3
    assert response["Location"] == body["status_url"]
    assert body["status_url"].endswith(f"/csv/status/{body['request_id']}")

    status = api.get(f"/csv/status/{body['request_id']}").json()
    assert status["status"] == "completed"
    assert status["progress"] == {
        "images_total": 3,
        "images_done": 3,
        "images_failed": 0,
        "percent": 100.0,
        "eta_seconds": None,
    }
    assert image_server.hits["/a.jpg"] == 1  # the same URL twice: fetched once
    shoe, hat = status["products"]
    assert shoe["input_image_urls"] == [a, b]
    assert all(u.startswith("http://") for u in shoe["output_image_urls"])
    assert hat["output_image_urls"] == [shoe["output_image_urls"][0]]
    request = ProcessingRequest.objects.get(pk=body["request_id"])
    images = list(ProductImage.objects.filter(request=request))
    assert request.bytes_in == sum(i.bytes_in or 0 for i in images)
    assert request.bytes_out == sum(i.bytes_out or 0 for i in images) < request.bytes_in
    assert {(i.width, i.height, i.input_format) for i in images} == {(640, 480, "JPEG"), (320, 240, "PNG")}
    assert default_storage.exists(request.output_csv_name)


def test_failed_image_is_reported_and_the_rest_completes(api: APIClient, image_server: ImageServer) -> None:
    good = image_server.add("/good.jpg", make_image(100, 100))
    html = image_server.add("/page.jpg", b"<html>hi</html>", content_type="text/html")
    body = upload(api, csv_bytes([("1", "A", [good, html, image_server.base_url + "/404.jpg"])])).json()
    status = api.get(f"/csv/status/{body['request_id']}").json()
    assert status["status"] == "completed_with_errors"
    product = status["products"][0]
    assert product["status"] == "partial"
    assert product["output_image_urls"][1:] == [None, None]
    assert [(e["url"], e["code"]) for e in product["errors"]] == [
        (html, "not_an_image"),
        (product["input_image_urls"][2], "http_404"),
    ]
    assert all(e["message"] for e in product["errors"])


def test_all_images_failed_is_failed(api: APIClient, image_server: ImageServer) -> None:
    body = upload(api, csv_bytes([("1", "A", [image_server.base_url + "/nope.jpg"])])).json()
    assert api.get(f"/csv/status/{body['request_id']}").json()["status"] == "failed"


def test_output_csv_is_aligned_with_inputs(api: APIClient, image_server: ImageServer) -> None:
    good = image_server.add("/g.jpg", make_image(100, 100))
    bad = image_server.base_url + "/missing.jpg"
    body = upload(api, csv_bytes([("=1", "A", [bad, good]), ("2", "B", [good])])).json()
    response = api.get(f"/csv/output/{body['request_id']}")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith("attachment;")
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0] == ["S. No.", "Product Name", "Input Image Urls", "Output Image Urls"]
    assert rows[1][0] == "'=1"  # formula injection neutralised
    assert rows[1][2] == f"{bad},{good}"
    first_out, second_out = rows[1][3].split(",")
    assert first_out == ""
    assert second_out.endswith(".jpg")
    assert rows[2][3] == second_out


def test_bad_csv_is_400_with_every_problem_and_stores_nothing(api: APIClient) -> None:
    content = b"S. No.,Product Name,Input Image Urls\n1,,http://x.example/a.jpg\n1,B,ftp://x.example/b.jpg\n"
    response = upload(api, content)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid_csv"
    assert body["detail"]
    assert {(e["row"], e["column"]) for e in body["errors"]} == {
        (2, "Product Name"),
        (3, "S. No."),
        (3, "Input Image Urls"),
    }
    assert ProcessingRequest.objects.count() == Product.objects.count() == 0


def test_too_large_is_413(api: APIClient, settings: Any) -> None:
    settings.CSV_MAX_BYTES = 2048
    response = upload(api, csv_bytes([("1", "A", ["http://x.example/a.jpg"])]) + b"#" * 3000)
    assert response.status_code == 413
    assert response.json()["error"] == "too_large"
    assert ProcessingRequest.objects.count() == 0


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"quality": "0"}, "quality"),
        ({"quality": "96"}, "quality"),
        ({"quality": "abc"}, "quality"),
        ({"output_format": "gif"}, "output_format"),
        ({"webhook_url": "file:///etc/passwd"}, "webhook_url"),
        ({"webhook_url": "https://10.0.0.1/hook"}, "webhook_url"),
    ],
)
def test_bad_options_are_400(api: APIClient, data: dict[str, str], field: str) -> None:
    response = upload(api, csv_bytes([("1", "A", ["http://x.example/a.jpg"])]), data=data)
    assert response.status_code == 400
    body = response.json()
    assert field in body
    assert list(body) == [field]
    assert body[field] and all(isinstance(message, str) and message for message in body[field])
    assert ProcessingRequest.objects.count() == 0


def test_missing_file_is_400_invalid_csv_naming_the_file_field(api: APIClient) -> None:
    response = api.post("/csv/upload", {"quality": "70"}, format="multipart")
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid_csv",
        "detail": "No file was submitted.",
        "errors": [{"row": None, "column": "file", "message": "No file was submitted."}],
        "errors_total": 1,
    }
    assert ProcessingRequest.objects.count() == 0


def test_empty_file_is_400_invalid_csv_like_any_bad_csv(api: APIClient) -> None:
    response = upload(api, b"")
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid_csv"
    assert body["errors_total"] == 1
    [error] = body["errors"]
    assert (error["row"], error["column"]) == (None, None)
    assert error["message"].startswith("The file is empty")
    assert body["detail"] == error["message"]
    assert ProcessingRequest.objects.count() == 0


def test_options_reach_the_images(api: APIClient, image_server: ImageServer) -> None:
    url = image_server.add("/q.jpg", make_image(200, 200))
    body = upload(api, csv_bytes([("1", "A", [url])]), data={"quality": "20", "output_format": "webp"}).json()
    request = ProcessingRequest.objects.get(pk=body["request_id"])
    assert (request.quality, request.output_format) == (20, "webp")
    image = ProductImage.objects.get(request=request)
    assert image.output_name.endswith(".webp")


def test_idempotency_key_returns_the_original(api: APIClient, image_server: ImageServer) -> None:
    url = image_server.add("/i.jpg", make_image(50, 50))
    first = upload(api, csv_bytes([("1", "A", [url])]), HTTP_IDEMPOTENCY_KEY="k-1")
    second = upload(api, csv_bytes([("1", "A", [url]), ("2", "B", [url])]), HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == 202
    assert second.status_code == 200
    assert second.json()["request_id"] == first.json()["request_id"]
    assert ProcessingRequest.objects.count() == 1
    third = upload(api, csv_bytes([("1", "A", [url])]), HTTP_IDEMPOTENCY_KEY="k-2")
    assert third.json()["request_id"] != first.json()["request_id"]


def test_another_clients_request_is_404_like_an_unknown_one(api: APIClient, image_server: ImageServer) -> None:
    url = image_server.add("/o.jpg", make_image(50, 50))
    request_id = upload(api, csv_bytes([("1", "A", [url])])).json()["request_id"]
    other_client, _ = api_client_create(name="other")
    other = APIClient()
    other.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_create(client=other_client)}")
    for path in (f"/csv/status/{request_id}", f"/csv/output/{request_id}"):
        assert other.get(path).status_code == 404
        assert api.get(path).status_code == 200
    assert other.post(f"/csv/requests/{request_id}/retry").status_code == 404
    unknown = "00000000-0000-0000-0000-000000000000"
    assert other.get(f"/csv/status/{unknown}").json() == other.get(f"/csv/status/{request_id}").json()
    assert other.get("/csv/requests").json()["results"] == []


def test_paths_work_with_and_without_trailing_slash(api: APIClient, image_server: ImageServer) -> None:
    url = image_server.add("/s.jpg", make_image(50, 50))
    request_id = upload(api, csv_bytes([("1", "A", [url])])).json()["request_id"]
    for path in (f"/csv/status/{request_id}", f"/csv/output/{request_id}", "/csv/requests"):
        assert api.get(path).status_code == 200
        assert api.get(path + "/").status_code == 200
    response = api.post("/csv/upload/", {"file": io.BytesIO(csv_bytes([("1", "A", [url])]))}, format="multipart")
    assert response.status_code == 202


def test_status_paginates_products_by_100(api: APIClient, image_server: ImageServer) -> None:
    url = image_server.add("/p.jpg", make_image(20, 20))
    rows = [(str(i), f"P{i}", [url]) for i in range(1, 251)]
    request_id = upload(api, csv_bytes(rows)).json()["request_id"]
    first = api.get(f"/csv/status/{request_id}").json()
    assert first["products_count"] == 250
    assert len(first["products"]) == 100
    assert first["previous"] is None
    assert first["next"].endswith("?page=2")
    third = api.get(f"/csv/status/{request_id}?page=3").json()
    assert [p["serial_number"] for p in third["products"]] == [str(i) for i in range(201, 251)]
    assert third["next"] is None
    assert api.get(f"/csv/status/{request_id}?page=4").status_code == 404


def test_requests_list_is_newest_first(api: APIClient, image_server: ImageServer) -> None:
    url = image_server.add("/l.jpg", make_image(20, 20))
    ids = [upload(api, csv_bytes([("1", "A", [url])])).json()["request_id"] for _ in range(3)]
    body = api.get("/csv/requests").json()
    assert [r["request_id"] for r in body["results"]] == ids[::-1]
    assert body["count"] == 3
    assert body["results"][0]["progress"]["percent"] == 100.0


def test_retry_requeues_failed_images(api: APIClient, image_server: ImageServer) -> None:
    flaky = image_server.base_url + "/later.jpg"
    request_id = upload(api, csv_bytes([("1", "A", [flaky])])).json()["request_id"]
    assert api.get(f"/csv/status/{request_id}").json()["status"] == "failed"
    image_server.add("/later.jpg", make_image(30, 30))
    response = api.post(f"/csv/requests/{request_id}/retry")
    assert response.status_code == 202
    assert response.json()["images_requeued"] == 1
    status = api.get(f"/csv/status/{request_id}").json()
    assert status["status"] == "completed"
    assert status["progress"]["images_failed"] == 0
    assert ProductImage.objects.get(request_id=request_id).status == ImageStatus.DONE


def test_schema_and_docs_are_served(api: APIClient) -> None:
    schema = api.get("/api/schema/")
    assert schema.status_code == 200
    text = schema.content.decode()
    for path in ("/csv/upload", "/csv/status/{id}", "/csv/output/{id}", "/csv/requests"):
        assert path in text or path.replace("{id}", "{pk}") in text
    docs = api.get("/api/docs/")
    assert docs.status_code == 200
    assert b"swagger-ui" in docs.content
    assert b"cdn" not in docs.content.lower()


# --- The answers are the documented ones -------------------------------------------------------


def _json_schema(node: Any) -> Any:
    """An OpenAPI 3.0 schema as strict JSON Schema: `nullable` becomes a null alternative, and
    an object with documented properties refuses any other key (spectacular leaves that
    open), so an answer with a key the schema lacks fails, as one without a required key."""
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _json_schema(value) for key, value in node.items()}
    if "properties" in node:
        node.setdefault("additionalProperties", False)
    if node.pop("nullable", False):
        node = {"anyOf": [node, {"type": "null"}]}
    return node


class Documented:
    """Checks answers against the response schemas of /api/schema/."""

    def __init__(self, api: APIClient) -> None:
        response = api.get("/api/schema/", {"format": "json"})
        assert response.status_code == 200
        self.schema = response.json()
        self.checked: set[tuple[str, str, int]] = set()

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any]]:
        for template, operations in self.schema["paths"].items():
            pattern = re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(template.rstrip("/")))
            if re.fullmatch(pattern + "/?", path) and method in operations:
                return template, operations[method]
        raise AssertionError(f"{method.upper()} {path} is not documented")

    def check(self, response: Any) -> Any:
        """Validate one answer against the schema of its operation and status code."""
        method = response.request["REQUEST_METHOD"].lower()
        template, operation = self.operation(method, urlsplit(response.request["PATH_INFO"]).path)
        code = str(response.status_code)
        assert code in operation["responses"], f"{method.upper()} {template} does not document {code}"
        schema = operation["responses"][code]["content"]["application/json"]["schema"]
        root = _json_schema({**schema, "components": self.schema["components"]})
        validator = jsonschema.Draft202012Validator(root, format_checker=jsonschema.FormatChecker())
        body = response.json()
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(body)]
        assert not errors, f"{method.upper()} {template} {code}: {errors}"
        self.checked.add((method, template, response.status_code))
        return body


def test_the_strict_schema_refuses_a_key_it_does_not_document() -> None:
    schema = _json_schema({"type": "object", "properties": {"a": {"type": "integer", "nullable": True}}})
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"a": None}) and validator.is_valid({"a": 1})
    assert not validator.is_valid({"a": 1, "b": 2})
    assert not validator.is_valid({"a": "1"})


def test_real_answers_match_the_openapi_schema(api: APIClient, image_server: ImageServer, settings: Any) -> None:
    documented = Documented(api)
    good = image_server.add("/doc.jpg", make_image(64, 48))
    rows = [(str(n), f"P{n}", [good]) for n in range(1, 102)] + [
        ("102", "Broken", [good, image_server.base_url + "/x"])
    ]

    created = documented.check(upload(api, csv_bytes(rows), HTTP_IDEMPOTENCY_KEY="doc-1"))
    again = upload(api, csv_bytes(rows), HTTP_IDEMPOTENCY_KEY="doc-1")
    assert again.status_code == 200
    assert documented.check(again)["request_id"] == created["request_id"]
    request_id = created["request_id"]

    first = documented.check(api.get(f"/csv/status/{request_id}"))
    second = documented.check(api.get(first["next"]))
    assert second["products"][-1]["errors"][0]["code"] == "http_404"
    assert second["products"][-1]["output_image_urls"][1] is None
    assert second["previous"].endswith("?page=1")
    assert first["started_at"] and first["completed_at"]
    documented.check(api.get("/csv/requests"))
    retried = api.post(f"/csv/requests/{request_id}/retry")
    assert documented.check(retried)["images_requeued"] == 1

    # The refusals are documented too.
    documented.check(api.get("/csv/status/00000000-0000-0000-0000-000000000000"))
    documented.check(upload(api, b"S. No.,Product Name,Input Image Urls\n1,,ftp://x/a.jpg\n"))
    documented.check(upload(api, b""))
    documented.check(api.post("/csv/upload", {}, format="multipart"))
    documented.check(upload(api, csv_bytes(rows), data={"quality": "200"}))
    settings.CSV_MAX_BYTES = 1024
    documented.check(upload(api, csv_bytes(rows)))
    ProcessingRequest.objects.filter(pk=request_id).update(status="processing")
    documented.check(api.post(f"/csv/requests/{request_id}/retry"))
    documented.check(APIClient().get("/csv/requests"))

    assert {(method, template.rstrip("/"), code) for method, template, code in documented.checked} == {
        ("post", "/csv/upload", 202),
        ("post", "/csv/upload", 200),
        ("post", "/csv/upload", 400),
        ("post", "/csv/upload", 413),
        ("get", "/csv/status/{id}", 200),
        ("get", "/csv/status/{id}", 404),
        ("get", "/csv/requests", 200),
        ("get", "/csv/requests", 401),
        ("post", "/csv/requests/{id}/retry", 202),
        ("post", "/csv/requests/{id}/retry", 409),
    }


def test_status_page_links_stay_on_the_staff_view_and_keep_the_query(api: APIClient, image_server: ImageServer) -> None:
    url = image_server.add("/staff.jpg", make_image(20, 20))
    request_id = upload(api, csv_bytes([(str(i), f"P{i}", [url]) for i in range(1, 202)])).json()["request_id"]
    staff = Client()
    staff.force_login(User.objects.create_superuser("staff", "staff@example.com", "pw"))
    base = f"/admin/requests_app/processingrequest/{request_id}/status/"
    page = staff.get(base, {"format": "json", "page": "2"}).json()
    assert urlsplit(page["next"]).path == urlsplit(page["previous"]).path == base
    assert page["next"].endswith("?format=json&page=3")
    assert page["previous"].endswith("?format=json&page=1")
    assert staff.get(page["next"]).json()["next"] is None
    # The client's own links are the client API's.
    client_page = api.get(f"/csv/status/{request_id}", {"page": "2"}).json()
    assert urlsplit(client_page["next"]).path == f"/csv/status/{request_id}"
