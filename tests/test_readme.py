"""The README's "Try it" works as written, offline: its sample images served from docs/samples
by `python3 -m http.server` on 127.0.0.2, its catalogue uploaded to the real service, and the
result it describes is the one that comes back."""

from __future__ import annotations

import csv
import io
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import requests

from tests.conftest import IMAGE_HOST, ROOT, Stack, free_port, start_stack, stop_stack

pytestmark = pytest.mark.e2e

README = (ROOT / "README.md").read_text()
SAMPLE_PORT = 9000


def try_it() -> str:
    return README.split("## Try it\n", 1)[1].split("\n## ", 1)[0]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The service as the README's `make run` starts it, whatever lane the suite runs on:
    SQLite, the ORM broker and local files, whose outputs it serves itself."""
    s = start_stack(tmp_path_factory.mktemp("readme"), lane="sqlite")
    yield s
    stop_stack(s)


@pytest.fixture(scope="module")
def samples() -> Iterator[int]:
    """The README's file server, on a free port instead of 9000."""
    command = f"python3 -m http.server {SAMPLE_PORT} --bind {IMAGE_HOST} --directory docs/samples"
    assert command in try_it()
    port = free_port(IMAGE_HOST)
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", IMAGE_HOST, "--directory", "docs/samples"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                requests.get(f"http://{IMAGE_HOST}:{port}/", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=10)


def readme_catalogue(port: int) -> bytes:
    catalogue = re.search(r"cat > catalogue.csv <<'CSV'\n(.*?)\nCSV\n", try_it(), re.S)
    assert catalogue, "the README's catalogue.csv"
    return (catalogue.group(1) + "\n").replace(f":{SAMPLE_PORT}/", f":{port}/").encode()


def test_the_readme_try_it_runs_offline_as_written(stack: Stack, samples: int) -> None:
    assert "FETCH_ALLOWED_NETWORKS=127.0.0.2/32 make run" in try_it()
    created = stack.post("/csv/upload", files={"file": ("catalogue.csv", readme_catalogue(samples), "text/csv")})
    assert created.status_code == 202, created.text
    body = created.json()
    assert (body["products"], body["images"]) == (2, 3)

    status = stack.wait_finished(body["request_id"])
    assert status["status"] == "completed"
    assert status["progress"]["images_done"] == 3
    # The README quotes bytes_in: the three samples' sizes.
    assert f'"bytes_in": {status["bytes_in"]}' in try_it()
    assert status["bytes_out"] < status["bytes_in"]

    table = list(csv.reader(io.StringIO(stack.get(f"/csv/output/{body['request_id']}").text)))
    assert table[0] == ["S. No.", "Product Name", "Input Image Urls", "Output Image Urls"]
    outputs = [url for row in table[1:] for url in row[3].split(",")]
    assert len(outputs) == 3 and all(url.endswith(".jpg") for url in outputs)

    # What it says of a URL that does not answer.
    assert "http://127.0.0.2:9000/missing.jpg" in try_it()
    base = f"http://{IMAGE_HOST}:{samples}"
    missing = f'S. No.,Product Name,Input Image Urls\n1,SKU1,"{base}/shoe.jpg,{base}/missing.jpg"\n'
    broken = stack.post("/csv/upload", files={"file": ("m.csv", missing.encode(), "text/csv")}).json()
    ended = stack.wait_finished(broken["request_id"])
    assert ended["status"] == "completed_with_errors"
    assert [error["code"] for error in ended["products"][0]["errors"]] == ["http_404"]
