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


def test_renditions_every_size_listed_in_the_csv_and_fetched_at_its_size(
    stack: Stack, module_image_server: ImageServer
) -> None:
    big = module_image_server.add("/e2e/r/big.jpg", make_image(2400, 1800))
    wide = module_image_server.add("/e2e/r/wide.jpg", make_image(1000, 400))
    tiny = module_image_server.add("/e2e/r/tiny.png", make_image(150, 100, "PNG"), content_type="image/png")
    missing = module_image_server.base_url + "/e2e/r/missing.jpg"
    rows = [("1", "Sofa", [big, wide]), ("2", "Lamp", [tiny, missing, big])]
    response = stack.post(
        "/csv/upload",
        files={"file": ("sized.csv", csv_bytes(rows), "text/csv")},
        data={"sizes": "200,1600,800"},
    )
    assert response.status_code == 202, response.text
    status = stack.wait_finished(response.json()["request_id"])
    assert status["status"] == "completed_with_errors"
    assert module_image_server.hits["/e2e/r/big.jpg"] == 1

    # What each source gives at 1600, 800 and 200: fitted, never enlarged.
    expected = {
        big: [(1600, 1200), (800, 600), (200, 150)],
        wide: [(1000, 400), (800, 320), (200, 80)],
        tiny: [(150, 100), (150, 100), (150, 100)],
    }
    sofa, lamp = status["products"]
    assert [[(o["width"], o["height"]) for o in outputs] for outputs in sofa["outputs"]] == [
        expected[big],
        expected[wide],
    ]
    assert lamp["outputs"][1] == []  # the missing image has none
    assert [o["size"] for o in lamp["outputs"][0]] == [1600, 800, 200]

    output = stack.get(f"/csv/output/{status['request_id']}")
    table = list(csv.reader(io.StringIO(output.text)))
    assert table[0] == [
        "S. No.",
        "Product Name",
        "Input Image Urls",
        "Output Image Urls",
        "Output Image Urls (800px)",
        "Output Image Urls (200px)",
    ]
    fetched_urls = set()
    for _, _, inputs, *columns in table[1:]:
        for index, column in enumerate(columns):
            cells = column.split(",")
            assert len(cells) == len(inputs.split(","))  # aligned like the main column
            for source, url in zip(inputs.split(","), cells, strict=True):
                if source == missing:
                    assert url == ""
                    continue
                fetched = requests.get(url, timeout=10)
                assert fetched.status_code == 200, url
                assert Image.open(io.BytesIO(fetched.content)).size == expected[source][index]
                fetched_urls.add(url)
    # One stored output per distinct rendition: the tiny source is stored once for all three.
    assert len(fetched_urls) == 3 + 3 + 1


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


def test_automatic_quality_and_avif_recorded_per_image_and_fetched_as_avif(
    stack: Stack, module_image_server: ImageServer
) -> None:
    photo = module_image_server.add("/e2e/q/photo.jpg", make_image(800, 600))
    png = module_image_server.add("/e2e/q/photo.png", make_image(400, 300, "PNG"), content_type="image/png")
    rows = [("1", "Chair", [photo, png])]
    response = stack.post(
        "/csv/upload",
        files={"file": ("auto.csv", csv_bytes(rows), "text/csv")},
        data={"quality": "auto:eco", "output_format": "avif"},
    )
    assert response.status_code == 202, response.text
    status = stack.wait_finished(response.json()["request_id"])
    assert status["status"] == "completed"
    assert status["options"] == {"quality": "auto:eco", "output_format": "avif", "keep_copyright": True, "sizes": []}

    [chair] = status["products"]
    inputs = {photo: (800, 600), png: (400, 300)}
    for record, out in zip(chair["images"], chair["output_image_urls"], strict=True):
        assert record["status"] == "done"
        assert (record["format"], record["candidate"], record["encoder"]) == ("avif", "reencoded", "libaom")
        # An automatic quality: the encoder quality it settled on and the score it predicts.
        assert 1 <= record["quality_chosen"] <= 95
        assert 0 < record["score"] <= 100
        assert record["output_url"] == out
        fetched = requests.get(out, timeout=10)
        assert fetched.status_code == 200, out
        image = Image.open(io.BytesIO(fetched.content))
        assert image.format == "AVIF"
        assert image.size == inputs[record["url"]]
        image.load()
        assert len(fetched.content) == record["bytes_out"] < record["bytes_in"]
