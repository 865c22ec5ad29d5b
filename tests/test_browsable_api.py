"""The browsable API in-process: GET on the upload page shows its form (no 405 block), and
each endpoint has a title of its own."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.test import APIClient

from requests_app.services.requests import request_create
from tests.conftest import csv_bytes

pytestmark = pytest.mark.django_db


@pytest.fixture
def browser() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("staff", "staff@example.com", "pw"))
    return client


def title(html: str) -> str:
    match = re.search(r"<h1>\s*(.*?)\s*</h1>", html, re.S)
    assert match, html[:500]
    return match.group(1)


def test_get_on_the_upload_page_shows_the_form_without_a_405(browser: Client) -> None:
    page = browser.get("/csv/upload", HTTP_ACCEPT="text/html")
    assert page.status_code == 200
    html = page.content.decode()
    assert "405" not in html and "Method Not Allowed" not in html
    assert 'name="file"' in html and 'enctype="multipart/form-data"' in html
    assert title(html) == "Upload a CSV"


def test_a_json_client_still_gets_405_on_get_upload(api: APIClient) -> None:
    response = api.get("/csv/upload")
    assert response.status_code == 405
    assert response["Allow"].startswith("POST") or "POST" in response["Allow"]


def test_each_endpoint_has_its_own_title(browser: Client, settings: Any) -> None:
    owner = User.objects.get(username="staff")
    request, _ = request_create(owner=owner, csv_file=csv_bytes([("1", "A", ["https://x.example/a.jpg"])]))
    pages = {
        "/csv/requests": "Your requests",
        f"/csv/status/{request.pk}": "Request status",
        f"/csv/requests/{request.pk}/retry": "Retry failed images",
        f"/csv/requests/{request.pk}/webhook/resend": "Resend the webhook",
    }
    for path, expected in pages.items():
        assert title(browser.get(path, HTTP_ACCEPT="text/html").content.decode()) == expected, path
