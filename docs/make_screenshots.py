"""Screenshots of the admin for the README, from a real run of the service.

    .venv/bin/python docs/make_screenshots.py

It starts the service as the browser tests do (gunicorn + qcluster on a temporary SQLite
database, tests/test_browser.py), serves real photographs from a local image server (the
colour photographs bundled in scikit-image's wheel; nothing is downloaded), uploads a few
catalogues through the API and the admin, and photographs the pages with Debian's chromium.
Writes docs/screenshots/*.png.
"""

from __future__ import annotations

import importlib.util
import io
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from PIL import Image  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from tests.conftest import ImageServer, csv_bytes, make_image, stop_stack  # noqa: E402
from tests.test_browser import CHROMIUM, admin_login, launch, start_admin_stack  # noqa: E402

OUT = ROOT / "docs" / "screenshots"
VIEWPORT = {"width": 1440, "height": 900}

# (file in skimage/data, product name, the size it is served at)
PHOTOS = [
    ("coffee.png", "Espresso cup (porcelain)", (1600, 1067)),
    ("chelsea.png", "Cat bed (felt)", (1400, 1000)),
    ("astronaut.png", "Astronaut poster A2", (1200, 1200)),
    ("rocket.jpg", "Rocket model kit", (1100, 1650)),
    ("motorcycle_left.png", "Touring motorcycle 1:18", (1500, 1000)),
    ("hubble_deep_field.jpg", "Deep field print", (1600, 1600)),
    ("retina.jpg", "Macro lens test chart", (1300, 1300)),
    ("ihc.png", "Botanical print (stained)", (1200, 1200)),
]


def photo(name: str, size: tuple[int, int]) -> bytes:
    """A bundled photograph, resized and saved as a high-quality JPEG, as shops upload them."""
    spec = importlib.util.find_spec("skimage")
    folder = Path(spec.submodule_search_locations[0]) / "data" if spec and spec.submodule_search_locations else None
    if folder is None or not (folder / name).exists():
        return make_image(*size)
    image = Image.open(folder / name).convert("RGB").resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


class Receiver:
    """A webhook receiver that answers 204 to every POST."""

    def __init__(self, host: str = "127.0.0.2") -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.httpd.server_address[1]}/hooks/images"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def wait_all(base_url: str, key: str, ids: list[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    for request_id in ids:
        while time.monotonic() < deadline:
            status = requests.get(
                f"{base_url}/csv/status/{request_id}", headers={"Authorization": f"Bearer {key}"}, timeout=30
            ).json()["status"]
            if status in ("completed", "completed_with_errors", "failed"):
                break
            time.sleep(0.3)


def main() -> None:
    if not CHROMIUM.exists():
        sys.exit(f"{CHROMIUM} is missing: apt-get install chromium")
    OUT.mkdir(parents=True, exist_ok=True)
    server = ImageServer()
    receiver = Receiver()
    urls = []
    for index, (name, _, size) in enumerate(PHOTOS):
        urls.append(server.add(f"/catalogue/{index}-{name.split('.')[0]}.jpg", photo(name, size)))
    missing = server.base_url + "/catalogue/discontinued.jpg"
    page_html = server.add("/catalogue/preview.jpg", b"<html>moved</html>", content_type="text/html")
    slow = [server.add(f"/slow/{i}.jpg", photo(PHOTOS[i][0], PHOTOS[i][2]), delay=25 + i) for i in range(3)]

    with tempfile.TemporaryDirectory(prefix="screenshots-") as tmp:
        stack = start_admin_stack(Path(tmp))
        try:
            key = stack.manage("create_api_client", "northwind-store").strip().splitlines()[-1]

            def upload(filename: str, rows: list[tuple[str, str, list[str]]], **data: str) -> str:
                response = requests.post(
                    stack.base_url + "/csv/upload",
                    headers={"Authorization": f"Bearer {key}"},
                    files={"file": (filename, csv_bytes(rows), "text/csv")},
                    data=data,
                    timeout=60,
                )
                if response.status_code >= 400:
                    raise RuntimeError(f"upload {filename}: {response.status_code} {response.text}")
                return str(response.json()["request_id"])

            names = [p[1] for p in PHOTOS]
            done = [
                upload("spring-catalogue.csv", [(str(i + 1), names[i], [urls[i]]) for i in range(4)]),
                upload("webp-trial.csv", [(str(i + 1), names[i], [urls[i]]) for i in range(2)], output_format="webp"),
            ]
            with_errors = upload(
                "summer-catalogue.csv",
                [
                    ("101", names[0], [urls[0], urls[1]]),
                    ("102", names[2], [urls[2]]),
                    ("103", names[3], [urls[3], missing]),
                    ("104", names[4], [urls[4], urls[5]]),
                    ("105", names[6], [urls[6], page_html]),
                    ("106", names[7], [urls[7]]),
                ],
                quality="60",
                webhook_url=receiver.url,
            )
            wait_all(stack.base_url, key, [*done, with_errors])

            with sync_playwright() as playwright:
                browser = launch(playwright)
                context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
                page = context.new_page()
                admin_login(page, stack.base_url)

                # One upload through the admin, by the staff member, still running when the
                # list is photographed.
                page.goto(stack.base_url + "/admin/requests_app/processingrequest/upload/")
                page.screenshot(path=str(OUT / "admin-upload.png"))
                content = csv_bytes([(str(i + 1), names[i], [slow[i], urls[i + 3]]) for i in range(3)])
                page.set_input_files(
                    "#id_file", {"name": "autumn-catalogue.csv", "mimeType": "text/csv", "buffer": content}
                )
                page.click("input[name=_upload]")
                page.wait_for_url("**/change/")
                time.sleep(4)  # a few of its images done, the slow ones not

                page.goto(stack.base_url + "/admin/requests_app/processingrequest/")
                page.screenshot(path=str(OUT / "admin-requests.png"))

                page.goto(f"{stack.base_url}/admin/requests_app/processingrequest/{with_errors}/change/")
                page.wait_for_function(
                    "() => [...document.querySelectorAll('img')].every(i => i.complete)", timeout=30_000
                )
                page.screenshot(path=str(OUT / "admin-request-page.png"), full_page=True)

                page.set_viewport_size(VIEWPORT)
                page.goto(stack.base_url + "/admin/requests_app/apiclient/")
                page.click("text=northwind-store")
                page.screenshot(path=str(OUT / "admin-api-client.png"))
                context.close()
                browser.close()
        finally:
            stop_stack(stack)
            server.close()
            receiver.close()
    for path in sorted(OUT.glob("*.png")):
        print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
