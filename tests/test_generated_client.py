"""The schema is the answer: a client generated from /api/schema/ by openapi-python-client
(as a client's developer would make one) drives the real service, upload → status → output →
retry → resend, and every answer, refusals included, parses into its typed model: every key
in a declared field (nothing in the `additional_properties` fallback), every status an enum
member, the output CSV as text.

The generator needs no network; it runs on the schema the running service serves.
"""

from __future__ import annotations

import importlib
import io
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import attrs
import httpx
import pytest

from tests.conftest import ImageServer, Stack, csv_bytes, make_image

pytestmark = pytest.mark.e2e

PACKAGE = "imageproc_client"
FINAL = {"completed", "completed_with_errors", "failed"}


@pytest.fixture(scope="module")
def generated(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The client package, generated from the schema the running service serves."""
    tmp = tmp_path_factory.mktemp("generated")
    schema = httpx.get(stack.base_url + "/api/schema/?format=json", timeout=30)
    assert schema.status_code == 200
    (tmp / "schema.json").write_bytes(schema.content)
    # No post hooks: the generator would run ruff over the generated code, which only formats it.
    (tmp / "config.json").write_text('{"post_hooks": []}')
    subprocess.run(
        [
            sys.executable,
            "-m",
            "openapi_python_client",
            "generate",
            "--path",
            str(tmp / "schema.json"),
            "--output-path",
            str(tmp / PACKAGE),
            "--meta",
            "none",
            "--config",
            str(tmp / "config.json"),
            # A construct of the schema the generator cannot express fails the test.
            "--fail-on-warning",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    sys.path.insert(0, str(tmp))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(tmp))
        for name in [name for name in sys.modules if name == PACKAGE or name.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def op(name: str) -> Any:
    """One generated endpoint module, e.g. op("csv.csv_upload_create")."""
    return importlib.import_module(f"{PACKAGE}.api.{name}")


def model(name: str) -> Any:
    return getattr(importlib.import_module(f"{PACKAGE}.models"), name)


def assert_typed(value: Any, where: str = "answer") -> None:
    """Every key of the answer landed in a declared, typed field: nothing in the
    additional_properties fallback (except in a model that is only a typed map, as field
    errors are). A required field missing fails in from_dict already; an optional one that
    the answer leaves out is Unset, as it should be."""
    if attrs.has(type(value)):
        declared = [field.name for field in attrs.fields(type(value)) if field.name != "additional_properties"]
        extra = getattr(value, "additional_properties", {})
        if declared:
            assert extra == {}, f"{where} ({type(value).__name__}) fell back to additional_properties: {extra}"
        for name in declared:
            assert_typed(getattr(value, name), f"{where}.{name}")
        assert_typed(extra, f"{where}.additional_properties")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            assert_typed(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            assert_typed(item, f"{where}[{key!r}]")


def parsed(response: Any, code: int, model_name: str) -> Any:
    """The answer's parsed body, checked: its status code, its model and every field typed."""
    assert response.status_code == code, (response.status_code, response.content[:500])
    body = response.parsed
    assert type(body).__name__ == model_name, f"{code}: {type(body).__name__}, not {model_name}: {response.content!r}"
    assert_typed(body)
    return body


def wait_final(client: Any, request_id: uuid.UUID, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = parsed(op("csv.csv_status_retrieve").sync_detailed(str(request_id), client=client), 200, "RequestStatus")
        if body.status.value in FINAL:
            return body
        time.sleep(0.2)
    raise AssertionError(f"request {request_id} did not finish")


def test_a_generated_client_parses_every_answer(
    generated: ModuleType, stack: Stack, module_image_server: ImageServer
) -> None:
    client = generated.AuthenticatedClient(base_url=stack.base_url, token=stack.api_key, timeout=60.0)
    anonymous = generated.Client(base_url=stack.base_url, timeout=60.0)
    status_enum = model("RequestStatusEnum")
    file_type = importlib.import_module(f"{PACKAGE}.types").File

    def csv_file(data: bytes) -> Any:
        return file_type(payload=io.BytesIO(data), file_name="catalogue.csv", mime_type="text/csv")

    health = parsed(op("health.health_retrieve").sync_detailed(client=anonymous), 200, "Health")
    assert health.status.value == "ok" and health.checks.workers.clusters >= 1

    # A slow image keeps the request running long enough to be refused while it runs; a
    # missing one fails, then is served (slowly) for the retry.
    slow = module_image_server.add("/gen/slow.jpg", make_image(64, 48), delay=2.0)
    flaky = module_image_server.base_url + "/gen/later.jpg"
    rows = csv_bytes([("1", "Shoe", [slow]), ("2", "Hat", [flaky])])
    upload = op("csv.csv_upload_create")
    answer = upload.sync_detailed(
        client=client,
        body=model("UploadRequest")(file=csv_file(rows), webhook_url=module_image_server.base_url + "/hook"),
        idempotency_key=f"gen-{uuid.uuid4()}",
    )
    created = parsed(answer, 202, "UploadResult")
    assert created.status is status_enum.PENDING
    assert answer.headers["Location"] == created.status_url
    request_id = created.request_id

    running = parsed(op("csv.csv_status_retrieve").sync_detailed(str(request_id), client=client), 200, "RequestStatus")
    assert isinstance(running.status, status_enum)
    output = op("csv.csv_output_retrieve")
    parsed(output.sync_detailed(str(request_id), client=client), 409, "Error")
    resend = op("csv.csv_requests_webhook_resend_create")
    parsed(resend.sync_detailed(str(request_id), client=client), 409, "Error")
    early = output.sync_detailed(str(request_id), client=client, partial=True)
    assert early.status_code == 200 and isinstance(early.parsed, str) and "Output Image Urls" in early.parsed

    finished = wait_final(client, request_id)
    assert finished.status is status_enum.COMPLETED_WITH_ERRORS
    hat = finished.products[1]
    assert hat.status.value == "failed" and hat.errors[0].code == "http_404"
    assert hat.output_image_urls == [None]

    csv_text = output.sync_detailed(str(request_id), client=client)
    assert csv_text.status_code == 200 and isinstance(csv_text.parsed, str)
    assert csv_text.parsed.splitlines()[0].endswith("Output Image Urls")

    listing = parsed(op("csv.csv_requests_list").sync_detailed(client=client), 200, "PaginatedRequestSummaryList")
    newest = listing.results[0]
    assert newest.request_id == request_id and newest.status is status_enum.COMPLETED_WITH_ERRORS

    # The failed image is there now (slowly): the retry runs long enough to refuse a second one.
    module_image_server.add("/gen/later.jpg", make_image(32, 32), delay=2.0)
    retry = op("csv.csv_requests_retry_create")
    retried_answer = retry.sync_detailed(str(request_id), client=client)
    retried = parsed(retried_answer, 202, "RetryResult")
    assert retried.images_requeued == 1 and retried.status is status_enum.PROCESSING
    assert retried_answer.headers["Location"] == created.status_url
    parsed(retry.sync_detailed(str(request_id), client=client), 409, "Error")
    assert wait_final(client, request_id).status is status_enum.COMPLETED

    resent = parsed(resend.sync_detailed(str(request_id), client=client), 202, "WebhookResendResult")
    assert resent.request_id == request_id and isinstance(resent.status, model("WebhookStatusEnum"))

    # The refusals parse into their documented models too.
    bad = upload.sync_detailed(
        client=client, body=model("UploadRequest")(file=csv_file(b"S. No.,Product Name,Input Image Urls\n1,,ftp://x\n"))
    )
    problems = parsed(bad, 400, "CsvError")
    assert {(e.row, e.column) for e in problems.errors} == {(2, "Product Name"), (2, "Input Image Urls")}
    field = upload.sync_detailed(client=client, body=model("UploadRequest")(file=csv_file(rows), quality=200))
    assert "quality" in parsed(field, 400, "FieldErrors").additional_properties
    # An empty webhook_url is no webhook URL (Swagger UI's form sends one).
    empty = upload.sync_detailed(client=client, body=model("UploadRequest")(file=csv_file(rows), webhook_url=""))
    parsed(empty, 202, "UploadResult")
    unknown = str(uuid.uuid4())
    parsed(op("csv.csv_status_retrieve").sync_detailed(unknown, client=client), 404, "Error")
    parsed(op("csv.csv_status_retrieve").sync_detailed(str(request_id), client=anonymous), 401, "Error")
    parsed(output.sync_detailed(str(request_id), client=client, partial="maybe"), 400, "CsvOutputRetrieveResponse400")
    # A body that is not a form: the generated client always sends one, so the raw answer of
    # another client goes through the generated parser.
    raw = client.get_httpx_client().post("/csv/upload", content=b"x", headers={"Content-Type": "text/plain"})
    parsed(upload._build_response(client=client, response=raw), 415, "Error")
