"""End to end, as a client sees it: the real web server and a real qcluster (through
`manage.py serve`) on a file SQLite database, images from a real local HTTP server."""

from __future__ import annotations

import csv
import io
import time

import pytest
import requests
from PIL import Image

from tests.conftest import ImageServer, Stack, csv_bytes, make_image

pytestmark = pytest.mark.e2e


def test_upload_poll_download_and_fetch_every_output(stack: Stack, module_image_server: ImageServer) -> None:
    sizes = [(800, 600), (640, 480), (1200, 900), (300, 200)]
    urls = [module_image_server.add(f"/e2e/{i}.jpg", make_image(w, h)) for i, (w, h) in enumerate(sizes)]
    png = module_image_server.add("/e2e/alpha.png", make_image(400, 300, "PNG", mode="RGBA"), content_type="image/png")
    missing = module_image_server.base_url + "/e2e/missing.jpg"
    rows = [
        ("1", "Shoe", [urls[0], urls[1]]),
        ("2", "Hat", [urls[2], png, urls[0]]),  # urls[0] again: fetched once
        ("3", "Bag", [urls[3], missing]),
    ]
    started = time.monotonic()
    response = stack.post("/csv/upload", files={"file": ("catalogue.csv", csv_bytes(rows), "text/csv")})
    assert response.status_code == 202, response.text
    created = response.json()
    assert created["products"] == 3
    assert created["images"] == 7
    assert response.headers["Location"] == created["status_url"]

    status = stack.wait_finished(created["request_id"])
    elapsed = time.monotonic() - started
    print(f"\nend-to-end request of 7 images finished in {elapsed:.2f}s")

    assert status["status"] == "completed_with_errors"
    assert status["progress"] == {
        "images_total": 7,
        "images_done": 6,
        "images_failed": 1,
        "percent": 100.0,
        "eta_seconds": None,
    }
    assert module_image_server.hits["/e2e/0.jpg"] == 1
    assert [p["serial_number"] for p in status["products"]] == ["1", "2", "3"]
    bag = status["products"][2]
    assert bag["output_image_urls"][1] is None
    assert bag["errors"] == [{"url": missing, "code": "http_404", "message": bag["errors"][0]["message"]}]
    assert status["bytes_out"] < status["bytes_in"]

    output = stack.get(f"/csv/output/{created['request_id']}")
    assert output.status_code == 200
    assert output.headers["Content-Type"].startswith("text/csv")
    assert "attachment" in output.headers["Content-Disposition"]
    table = list(csv.reader(io.StringIO(output.text)))
    assert table[0] == ["S. No.", "Product Name", "Input Image Urls", "Output Image Urls"]
    assert [r[0] for r in table[1:]] == ["1", "2", "3"]

    expected_sizes = {urls[0]: sizes[0], urls[1]: sizes[1], urls[2]: sizes[2], urls[3]: sizes[3], png: (400, 300)}
    originals = {u: module_image_server.routes[u.split(module_image_server.base_url)[1]].body for u in expected_sizes}
    for _, _, inputs, outputs in table[1:]:
        for source, out in zip(inputs.split(","), outputs.split(","), strict=True):
            if source == missing:
                assert out == ""
                continue
            fetched = requests.get(out, timeout=10)
            assert fetched.status_code == 200, out
            image = Image.open(io.BytesIO(fetched.content))
            assert image.format == "JPEG"
            assert image.size == expected_sizes[source]
            assert len(fetched.content) < len(originals[source])


def test_status_and_output_while_processing(stack: Stack, module_image_server: ImageServer) -> None:
    slow = module_image_server.add("/e2e/slow.jpg", make_image(200, 200), delay=2.0)
    response = stack.post("/csv/upload", files={"file": ("slow.csv", csv_bytes([("1", "Slow", [slow])]), "text/csv")})
    request_id = response.json()["request_id"]
    early = stack.get(f"/csv/output/{request_id}")
    assert early.status_code == 409
    assert early.json()["error"] == "not_finished"
    partial = stack.get(f"/csv/output/{request_id}?partial=1")
    assert partial.status_code == 200
    assert list(csv.reader(io.StringIO(partial.text)))[1] == ["1", "Slow", slow, ""]
    assert stack.wait_finished(request_id)["status"] == "completed"


def test_health_reports_database_storage_and_workers(stack: Stack) -> None:
    body = requests.get(stack.base_url + "/health/", timeout=10).json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["storage"]["ok"] is True
    assert body["checks"]["workers"]["clusters"] >= 1
