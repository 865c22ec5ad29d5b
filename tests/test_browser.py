"""The admin and the browsable API in a real browser: Playwright driving Debian's chromium
against the real service (`manage.py serve`: gunicorn + qcluster) on a temporary database.

Never `playwright install`: the browser is /usr/bin/chromium (`apt-get install chromium`).
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import (
    ROOT,
    ImageServer,
    Route,
    Stack,
    csv_bytes,
    make_image,
    require_service,
    start_stack,
    stop_stack,
)

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
STAFF_USER = "staff"
STAFF_PASSWORD = "browser-test-password-7"
# Long enough for a request to finish on a slow CI machine; the tests never assert on time.
FINISH_MS = 90_000


def start_admin_stack(tmp: Path) -> Stack:
    """The whole service as `make run` starts it: static files collected (the admin's CSS),
    then gunicorn + qcluster, and a staff account."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "settings.base", "VAR_DIR": str(tmp)}
    env.pop("PYTEST_XDIST_WORKER", None)
    subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"], cwd=ROOT, env=env, check=True)
    stack = start_stack(tmp)
    subprocess.run(
        [sys.executable, "manage.py", "createsuperuser", "--noinput", "--username", STAFF_USER, "--email", "s@x.test"],
        cwd=ROOT,
        env={**stack.env, "DJANGO_SUPERUSER_PASSWORD": STAFF_PASSWORD},
        check=True,
        capture_output=True,
    )
    return stack


def launch(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def admin_login(page: Any, base_url: str) -> None:
    page.goto(f"{base_url}/admin/login/?next=/admin/")
    page.fill("#id_username", STAFF_USER)
    page.fill("#id_password", STAFF_PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{base_url}/admin/")


@pytest.fixture(scope="module")
def browser_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_service("chromium", CHROMIUM.exists())
    stack = start_admin_stack(tmp_path_factory.mktemp("browser"))
    yield stack
    stop_stack(stack)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require_service("chromium", CHROMIUM.exists())
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, browser_stack: Stack) -> Iterator[Any]:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    page = context.new_page()
    yield page
    context.close()


def loaded_images(page: Any, selector: str) -> list[int]:
    """naturalWidth of every image that matches: 0 for one the browser could not load."""
    return list(page.eval_on_selector_all(selector, "images => images.map(i => i.complete ? i.naturalWidth : -1)"))


def test_upload_watch_download_and_retry_in_the_admin(
    page: Any, browser_stack: Stack, module_image_server: ImageServer, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    server = module_image_server
    shoe = server.add("/b/shoe.jpg", make_image(800, 600))
    # Slow enough that the page is seen before the request has finished.
    hat = server.add("/b/hat.jpg", make_image(640, 480), delay=1.5)
    bag = server.add("/b/bag.png", make_image(300, 300, "PNG"), content_type="image/png")
    late = server.base_url + "/b/late.jpg"  # 404 now; served before the retry
    content = csv_bytes([("1", "Shoe", [shoe, hat]), ("2", "Bag", [bag, late])])

    admin_login(page, browser_stack.base_url)
    page.click("text=Upload CSV")
    page.set_input_files("#id_file", {"name": "catalogue.csv", "mimeType": "text/csv", "buffer": content})
    page.fill("#id_quality", "60")
    page.click("input[name=_upload]")
    page.wait_for_url("**/change/")
    expect(page.locator(".messagelist")).to_contain_text("Started processing catalogue.csv: 2 products, 4 images")
    request_id = page.url.rstrip("/").split("/")[-2]
    assert page.locator("#request-live").get_attribute("data-finished") == "false"

    # The page follows the progress by itself and reloads once the request has finished.
    expect(page.locator("#request-rate")).to_contain_text("100% finished", timeout=FINISH_MS)
    expect(page.locator("#request-status")).to_contain_text("Completed with errors")
    assert page.locator("#request-live").get_attribute("data-finished") == "true"
    expect(page.locator("#card-done")).to_contain_text("3 / 4")

    # Input thumbnails come straight from the client's URLs (once fetched), outputs from storage.
    outputs = page.locator("img.ip-output-thumb")
    expect(outputs).to_have_count(3)
    outputs.last.scroll_into_view_if_needed()
    page.wait_for_function(
        "() => [...document.querySelectorAll('img.ip-output-thumb')].every(i => i.complete && i.naturalWidth > 0)"
    )
    assert sorted(loaded_images(page, "img.ip-output-thumb")) == [300, 640, 800]
    page.wait_for_function("() => [...document.querySelectorAll('img.ip-input-thumb')].every(i => i.complete)")
    # The failed image's URL (a 404) is not loaded: only the inputs the service fetched.
    assert sorted(loaded_images(page, "img.ip-input-thumb")) == [300, 640, 800]
    assert page.locator("img.ip-input-thumb").first.get_attribute("referrerpolicy") == "no-referrer"
    failed = page.locator(".ip-image--failed")
    expect(failed).to_have_count(1)
    expect(failed).to_contain_text("http_404")

    with page.expect_download() as download_info:
        page.click("#download-output")
    download = download_info.value
    assert download.suggested_filename == f"output-{request_id}.csv"
    table = list(csv.reader(io.StringIO(Path(download.path()).read_text("utf-8"))))
    assert table[0] == ["S. No.", "Product Name", "Input Image Urls", "Output Image Urls"]
    assert [row[:3] for row in table[1:]] == [["1", "Shoe", f"{shoe},{hat}"], ["2", "Bag", f"{bag},{late}"]]
    bag_outputs = table[2][3].split(",")
    assert bag_outputs[1] == ""
    assert requests.get(bag_outputs[0], timeout=10).status_code == 200

    # The image is there now: retrying the failed one makes the request whole.
    server.add("/b/late.jpg", make_image(500, 400))
    page.click("#retry-failed")
    # It asks first: nothing is re-queued by a stray click.
    expect(page.locator("#confirm-message")).to_contain_text("1 failed image of this request")
    page.click("#confirm-action")
    expect(page.locator(".messagelist")).to_contain_text("Re-queued 1 failed image")
    expect(page.locator("#request-status")).to_contain_text("Completed", timeout=FINISH_MS)
    expect(page.locator("#request-status")).not_to_contain_text("errors")
    expect(page.locator("#card-done")).to_contain_text("4 / 4")
    expect(page.locator(".ip-image--failed")).to_have_count(0)
    expect(page.locator("img.ip-output-thumb")).to_have_count(4)
    status = browser_stack.manage(
        "shell",
        "-c",
        f"from requests_app.models import ProcessingRequest as R; "
        f"r = R.objects.get(pk='{request_id}'); print(r.status, r.images_done, r.images_failed)",
    )
    assert status.strip().splitlines()[-1].split() == ["completed", "4", "0"]

    # The list shows it, found by its id.
    page.goto(f"{browser_stack.base_url}/admin/requests_app/processingrequest/?q={request_id}")
    row = page.locator("#result_list tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("catalogue.csv")
    expect(row).to_contain_text("4/4")


def gated(body: bytes, gate: threading.Event) -> Route:
    """A JPEG answered only once the test opens `gate` (a minute at most)."""

    def respond(handler: BaseHTTPRequestHandler) -> None:
        gate.wait(60)
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return Route(body, respond=respond)


def test_the_request_page_updates_its_cards_and_status_while_the_request_runs(
    page: Any, browser_stack: Stack, module_image_server: ImageServer
) -> None:
    """The figures of a running request move without a reload: images done, the status row,
    not only the progress bar."""
    from playwright.sync_api import expect

    server = module_image_server
    second, third = threading.Event(), threading.Event()
    fast = server.add("/live/fast.jpg", make_image(400, 300))
    server.routes["/live/second.jpg"] = gated(make_image(400, 300), second)
    server.routes["/live/third.jpg"] = gated(make_image(400, 300), third)
    urls = [fast, server.base_url + "/live/second.jpg", server.base_url + "/live/third.jpg"]
    try:
        admin_login(page, browser_stack.base_url)
        page.click("text=Upload CSV")
        content = csv_bytes([("1", "Live", urls)])
        page.set_input_files("#id_file", {"name": "live.csv", "mimeType": "text/csv", "buffer": content})
        page.click("input[name=_upload]")
        page.wait_for_url("**/change/")
        # A mark in the page's window: a reload would drop it.
        page.evaluate("() => { window.loadedOnce = true; }")
        expect(page.locator("#card-done")).to_contain_text("1 / 3", timeout=FINISH_MS)

        second.set()  # the second image can end now, while the page is open
        expect(page.locator("#card-done")).to_contain_text("2 / 3", timeout=FINISH_MS)
        expect(page.locator("#request-status")).to_contain_text("Processing")
        expect(page.locator("#detail-status")).to_contain_text("Processing")
        assert page.locator("#request-live").get_attribute("data-finished") == "false"
        assert page.evaluate("() => window.loadedOnce === true"), "the page was reloaded, not updated"
    finally:
        second.set()
        third.set()
    # Then it finishes, and the page reloads once to show the final state.
    expect(page.locator("#request-status")).to_contain_text("Completed", timeout=FINISH_MS)
    expect(page.locator("#card-done")).to_contain_text("3 / 3")


def test_browsable_api_uploads_a_file_with_a_session(
    page: Any, browser_stack: Stack, module_image_server: ImageServer
) -> None:
    from playwright.sync_api import expect

    image = module_image_server.add("/api/one.jpg", make_image(320, 240))
    base = browser_stack.base_url
    page.goto(f"{base}/api-auth/login/?next=/csv/upload")
    page.fill("#id_username", STAFF_USER)
    page.fill("#id_password", STAFF_PASSWORD)
    page.click("[type=submit]")
    page.wait_for_url(f"{base}/csv/upload")

    form = page.locator("form[enctype='multipart/form-data']").filter(has=page.locator("input[name=file]"))
    form.locator("input[name=file]").set_input_files(
        {"name": "api.csv", "mimeType": "text/csv", "buffer": csv_bytes([("1", "Cap", [image])])}
    )
    form.locator("button:has-text('POST')").click()
    response = page.locator(".response-info")
    expect(response).to_contain_text("HTTP 202 Accepted")
    expect(response).to_contain_text('"images": 1')

    # The status URL in the answer is a link; the page answers in HTML to the same session.
    page.locator(".response-info a", has_text="/csv/status/").first.click()
    expect(page.locator(".response-info")).to_contain_text("HTTP 200 OK")
    expect(page.locator(".response-info")).to_contain_text('"serial_number": "1"')

    # A bad file: the errors are listed with their row and column, readable in the page.
    page.goto(f"{base}/csv/upload")
    form = page.locator("form[enctype='multipart/form-data']").filter(has=page.locator("input[name=file]"))
    bad = b"S. No.,Product Name,Input Image Urls\n1,Cap,ftp://example.com/a.jpg\n"
    form.locator("input[name=file]").set_input_files({"name": "bad.csv", "mimeType": "text/csv", "buffer": bad})
    form.locator("button:has-text('POST')").click()
    expect(page.locator(".response-info")).to_contain_text("HTTP 400 Bad Request")
    expect(page.locator(".response-info")).to_contain_text('"row": 2')
    expect(page.locator(".response-info")).to_contain_text("only http and https URLs are allowed")


def test_swagger_try_it_out_uploads_with_the_form_as_it_is_filled(page: Any, browser_stack: Stack) -> None:
    """Swagger UI fills each field of the upload form from the schema (`string` where the schema
    gives no example): with nothing but a file chosen, the upload is accepted."""
    from playwright.sync_api import expect

    base = browser_stack.base_url
    page.goto(f"{base}/api-auth/login/?next=/api/docs/")
    page.fill("#id_username", STAFF_USER)
    page.fill("#id_password", STAFF_PASSWORD)
    page.click("[type=submit]")
    page.wait_for_url(f"{base}/api/docs/")

    operation = page.locator("#operations-csv-csv_upload_create")
    operation.locator(".opblock-summary").click()
    operation.locator(".try-out__btn").click()
    expect(operation.locator("input[type=number], input[type=text]").first).to_be_visible()
    # What Swagger put in the form fields besides the file: no "string" placeholder value.
    filled = operation.locator(".parameters-col_description input:not([type=file])").evaluate_all(
        "inputs => inputs.map(i => i.value)"
    )
    assert "string" not in filled, filled
    operation.locator("input[type=file]").set_input_files(
        {"name": "try.csv", "mimeType": "text/csv", "buffer": csv_bytes([("1", "Cap", ["https://example.com/a.jpg"])])}
    )
    operation.locator("button.execute").click()
    status = operation.locator(".live-responses-table .response .response-col_status").first
    expect(status).to_have_text("202")
