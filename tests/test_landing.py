"""The front page at / (also the admin's "View site") exists and links to what does."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client


@pytest.mark.django_db
def test_the_front_page_links_the_api_docs_the_admin_and_health(client: Client, admin_client: Any) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page["Content-Type"].startswith("text/html")
    links = set(re.findall(r'href="([^"]+)"', page.content.decode()))
    assert {"/api/docs/", "/api/schema/", "/admin/", "/health/"} <= links
    for link in links - {"/admin/"}:
        assert client.get(link).status_code in (200, 503), link  # /health/ answers 503 without workers
    assert client.get("/admin/").status_code == 302  # to the login page


@pytest.mark.django_db
def test_the_admins_view_site_link_goes_to_the_front_page(admin_client: Client) -> None:
    index = admin_client.get("/admin/")
    assert index.status_code == 200
    view_site = re.search(r'<a href="([^"]+)">View site</a>', index.content.decode())
    assert view_site is not None
    assert admin_client.get(view_site.group(1)).status_code == 200
