"""Every link the service hands out follows the port it serves on.

`PORT=8100 make run` serves on 8100; with PUBLIC_BASE_URL unset, the Location header, the
status and output URLs, the page links, the output image URLs (in the status answer, the
output CSV and the admin) and the webhook all point there, and each of them answers."""

from __future__ import annotations

import csv
import io
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from tests.conftest import ROOT, ImageServer, Stack, csv_bytes, make_image, start_stack, stop_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack_without_public_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Empty is unset (settings/base.py): the links then come from the port `serve` listens on.
    # `make run`'s lane on every lane: output links are the service's own only with local files.
    stack = start_stack(tmp_path_factory.mktemp("links"), {"PUBLIC_BASE_URL": ""}, lane="sqlite")
    yield stack
    stop_stack(stack)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def test_settings_derive_the_public_origin_from_host_and_port() -> None:
    def origin(**env: str) -> str:
        script = "import django; django.setup(); from django.conf import settings; print(settings.PUBLIC_BASE_URL)"
        environ = {"DJANGO_SETTINGS_MODULE": "settings.base", "PATH": "/usr/bin:/bin", **env}
        return subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, env=environ, check=True, capture_output=True, text=True
        ).stdout.strip()

    assert origin() == "http://127.0.0.1:8000"
    assert origin(PORT="8123") == "http://127.0.0.1:8123"
    assert origin(HOST="0.0.0.0", PORT="8123") == "http://127.0.0.1:8123"
    assert origin(HOST="::", PORT="9000") == "http://[::1]:9000"
    assert origin(HOST="images.local", PORT="80", PUBLIC_BASE_URL="") == "http://images.local:80"
    assert origin(PORT="8123", PUBLIC_BASE_URL="https://images.example.com/") == "https://images.example.com"


def test_every_link_points_at_the_port_the_service_serves_on(
    stack_without_public_url: Stack, module_image_server: ImageServer
) -> None:
    stack = stack_without_public_url
    here = stack.base_url  # http://127.0.0.1:<a free port>, never 8000
    assert not here.endswith(":8000")
    photo = module_image_server.add("/links/photo.jpg", make_image(320, 240))
    # 101 products: the status answer has a second page, so `next` and `previous` exist.
    rows = [(str(n), f"Product {n}", [photo]) for n in range(1, 102)]
    response = stack.post("/csv/upload", files={"file": ("links.csv", csv_bytes(rows), "text/csv")})
    assert response.status_code == 202, response.text
    created = response.json()
    links = [response.headers["Location"], created["status_url"], created["output_url"]]

    status = stack.wait_finished(created["request_id"])
    assert status["status"] == "completed"
    links += [status["output_url"], status["next"]]
    links += [url for product in status["products"] for url in product["output_image_urls"]]
    second = stack.get(urlsplit(status["next"]).path + "?" + urlsplit(status["next"]).query).json()
    links.append(second["previous"])
    table = list(csv.reader(io.StringIO(stack.get(f"/csv/output/{created['request_id']}").text)))
    links += [row[3] for row in table[1:]]

    assert {_origin(link) for link in links} == {here}
    for link in set(links):
        answer = requests.get(link, headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=10)
        assert answer.status_code == 200, link


def test_the_admin_shows_output_thumbnails_from_this_port(
    stack_without_public_url: Stack, module_image_server: ImageServer, tmp_path: Path
) -> None:
    stack = stack_without_public_url
    photo = module_image_server.add("/links/admin.jpg", make_image(200, 150))
    response = stack.post("/csv/upload", files={"file": ("a.csv", csv_bytes([("1", "A", [photo])]), "text/csv")})
    request_id = response.json()["request_id"]
    stack.wait_finished(request_id)

    subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", _MAKE_STAFF],
        cwd=ROOT,
        env=stack.env,
        check=True,
        capture_output=True,
    )
    session = requests.Session()
    login = stack.base_url + "/admin/login/"
    session.get(login, timeout=10)
    session.post(
        login,
        data={
            "username": "links-staff",
            "password": "links-pass-123",
            "csrfmiddlewaretoken": session.cookies["csrftoken"],
        },
        headers={"Referer": login},
        timeout=10,
    )
    page = session.get(f"{stack.base_url}/admin/requests_app/processingrequest/{request_id}/change/", timeout=10)
    assert page.status_code == 200
    media = set(re.findall(r'(?:src|href)="(https?://[^"]+/media/[^"]+)"', page.text))
    assert media, "the request page shows its output"
    for url in media:
        assert _origin(url) == stack.base_url
        assert requests.get(url, timeout=10).status_code == 200


_MAKE_STAFF = (
    "from django.contrib.auth import get_user_model; "
    "get_user_model().objects.create_superuser('links-staff', 'staff@example.com', 'links-pass-123')"
)
