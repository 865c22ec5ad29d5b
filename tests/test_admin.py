"""The admin in-process: the requests list (and what it costs in queries), the request page,
uploads, actions through the services, API clients and keys, products and images; and the
DRF browsable API with a session, for every endpoint. Tasks run synchronously (test settings)
against a real image server on 127.0.0.2."""

from __future__ import annotations

import csv
import io
import re
import uuid
from collections.abc import Iterator
from datetime import timedelta
from html import unescape as html_unescape
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from products.models import ImageStatus, Product, ProductImage
from requests_app.admin.request_page import PRODUCTS_PER_PAGE
from requests_app.formatting import human_bytes
from requests_app.models import ApiClient, ApiKey, ProcessingRequest, RequestStatus, WebhookDelivery
from requests_app.services.clients import api_client_create, api_key_create
from requests_app.services.requests import RequestOptions, request_create
from tests.conftest import ImageServer, csv_bytes, make_image
from tests.test_webhooks import Receiver

pytestmark = pytest.mark.django_db(transaction=True)

ADMIN = "/admin/requests_app/processingrequest/"


@pytest.fixture
def staff(db: Any) -> User:
    return User.objects.create_superuser("staff", "staff@example.com", "pw")


@pytest.fixture
def browser(staff: User) -> Client:
    client = Client()
    client.force_login(staff)
    return client


@pytest.fixture
def acme(db: Any) -> ApiClient:
    client, _ = api_client_create(name="acme")
    return client


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def upload(owner: User, rows: list[tuple[str, str, list[str]]], **options: Any) -> ProcessingRequest:
    obj, _ = request_create(
        owner=owner,
        csv_file=csv_bytes(rows),
        filename=options.pop("filename", "catalogue.csv"),
        options=RequestOptions(**options),
    )
    obj.refresh_from_db()
    return obj


@pytest.fixture
def finished(acme: ApiClient, image_server: ImageServer) -> ProcessingRequest:
    """A request of another owner than the staff member: 2 products, 3 images, one a 404."""
    shoe = image_server.add("/shoe.jpg", make_image(640, 480))
    hat = image_server.add("/hat.png", make_image(320, 200, "PNG"), content_type="image/png")
    obj = upload(acme.user, [("1", "Shoe", [shoe, hat]), ("2", "Hat", [image_server.base_url + "/gone.jpg"])])
    assert obj.status == RequestStatus.COMPLETED_WITH_ERRORS
    return obj


def many_requests(owner: User, count: int, *, start: int = 0) -> list[ProcessingRequest]:
    """Rows for the list alone (no products): every status, counters and timings set."""
    now = timezone.now()
    statuses = list(RequestStatus.values)
    rows = [
        ProcessingRequest(
            owner=owner,
            original_filename=f"batch-{start + i:05d}.csv",
            status=statuses[i % len(statuses)],
            products_total=10,
            images_total=20,
            images_done=15,
            images_failed=i % 3,
            bytes_in=2_000_000,
            bytes_out=600_000,
            created_at=now - timedelta(minutes=start + i),
            started_at=now - timedelta(minutes=start + i),
            completed_at=now - timedelta(minutes=start + i) + timedelta(seconds=30),
        )
        for i in range(count)
    ]
    return ProcessingRequest.objects.bulk_create(rows)


def result_rows(html: str) -> int:
    """Rows of the admin's result list."""
    table = re.search(r'<table id="result_list">.*?<tbody>(.*?)</tbody>', html, re.S)
    return table.group(1).count("<tr") if table else 0


# --- The requests list -------------------------------------------------------------------------


def test_list_shows_owner_badge_progress_savings_and_duration(browser: Client, finished: ProcessingRequest) -> None:
    html = browser.get(ADMIN).content.decode()
    assert "catalogue.csv" in html
    assert str(finished.pk)[:8] in html
    assert ">acme<" in html
    assert '<span class="ip-badge ip-badge--completed_with_errors">Completed with errors</span>' in html
    assert 'class="ip-progress__done" style="width:66.67%"' in html
    assert 'class="ip-progress__failed" style="width:33.33%"' in html
    assert "3/3" in html and "1 failed" in html
    percent = round(100 * (1 - finished.bytes_out / finished.bytes_in), 1)
    assert f"saved {human_bytes(finished.bytes_in - finished.bytes_out)}, {percent}%" in html
    assert " s</td>" in html  # a duration in seconds
    assert 'id="service-overview"' in html  # workers, queue, requests in progress


def test_list_costs_the_same_queries_for_5_or_50_rows(browser: Client, acme: ApiClient) -> None:
    many_requests(acme.user, 5)
    with CaptureQueriesContext(connection) as few:
        assert result_rows(browser.get(ADMIN).content.decode()) == 5
    many_requests(acme.user, 45, start=5)
    with CaptureQueriesContext(connection) as more:
        assert result_rows(browser.get(ADMIN).content.decode()) == 50
    assert len(more) == len(few), [q["sql"] for q in more]
    assert len(more) <= 12


def test_list_is_newest_first_and_paginated(browser: Client, acme: ApiClient) -> None:
    many_requests(acme.user, 60)
    html = browser.get(ADMIN).content.decode()
    names = re.findall(r'<span class="ip-file">(batch-\d+\.csv)</span>', html)
    assert names == [f"batch-{i:05d}.csv" for i in range(50)]
    second = browser.get(ADMIN + "?p=2").content.decode()
    assert re.findall(r'<span class="ip-file">(batch-\d+\.csv)</span>', second) == [
        f"batch-{i:05d}.csv" for i in range(50, 60)
    ]


def test_search_matches_a_request_id_exactly_and_file_names_in_part(
    browser: Client, acme: ApiClient, finished: ProcessingRequest
) -> None:
    many_requests(acme.user, 3)
    with CaptureQueriesContext(connection) as queries:
        html = browser.get(ADMIN, {"q": str(finished.pk)}).content.decode()
    assert result_rows(html) == 1
    assert "catalogue.csv" in html
    # An exact match, never a pattern on the UUID column (MongoDB cannot run those).
    uuid_queries = [q["sql"] for q in queries if finished.pk.hex in q["sql"]]
    assert uuid_queries
    assert not any("LIKE" in sql for sql in uuid_queries)
    assert result_rows(browser.get(ADMIN, {"q": str(finished.pk).upper()}).content.decode()) == 1
    assert result_rows(browser.get(ADMIN, {"q": "BATCH-0000"}).content.decode()) == 3
    assert result_rows(browser.get(ADMIN, {"q": str(finished.pk)[:8]}).content.decode()) == 0
    assert result_rows(browser.get(ADMIN, {"q": str(uuid.uuid4())}).content.decode()) == 0


def test_filters_by_status_owner_and_date(browser: Client, acme: ApiClient, staff: User) -> None:
    many_requests(acme.user, 14)  # every status in turn, a minute apart
    many_requests(staff, 2, start=100)
    processing = ProcessingRequest.objects.filter(status="processing").count()
    assert 2 <= processing < 16
    assert result_rows(browser.get(ADMIN, {"status__exact": "processing"}).content.decode()) == processing
    assert result_rows(browser.get(ADMIN, {"owner__id__exact": staff.pk}).content.decode()) == 2
    ProcessingRequest.objects.filter(original_filename="batch-00000.csv").update(
        created_at=timezone.now() - timedelta(days=40)
    )
    # The filter's own "Past 7 days" link.
    listing = browser.get(ADMIN).content.decode()
    link = re.search(r'<a href="(\?created_at__gte=[^"]+)"[^>]*>Past 7 days</a>', listing).group(1)
    recent = browser.get(ADMIN + html_unescape(link))
    assert result_rows(recent.content.decode()) == 15


# --- The request page ----------------------------------------------------------------------------


def test_request_page_shows_summary_products_thumbnails_sizes_and_errors(
    browser: Client, finished: ProcessingRequest, image_server: ImageServer
) -> None:
    response = browser.get(f"{ADMIN}{finished.pk}/change/")
    assert response.status_code == 200
    html = response.content.decode()
    images = list(ProductImage.objects.filter(request=finished).order_by("product__position", "position"))
    shoe, hat, gone = images
    # Input thumbnails load the client's URL directly, without a referrer; outputs from storage.
    for image in (shoe, hat):
        assert (
            f'<img class="ip-input-thumb" src="{image.source_url}" alt="input" loading="lazy" '
            f'referrerpolicy="no-referrer"'
        ) in html
    # A URL the service did not fetch (it failed, or may be an address the fetch guard
    # refuses) is linked, never loaded by the staff's browser.
    assert html.count('class="ip-input-thumb"') == 2
    assert f'href="{gone.source_url}"' in html
    assert f'src="{gone.source_url}"' not in html
    for image in (shoe, hat):
        assert f'<img class="ip-output-thumb" src="http://127.0.0.1:8000/media/{image.output_name}"' in html
    assert html.count('class="ip-output-thumb"') == 2
    assert "640×480 JPEG" in html
    assert "320×200 PNG" in html
    assert f"saved {round(100 * (1 - shoe.bytes_out / shoe.bytes_in), 1)}%" in html
    assert "<strong>http_404</strong>" in html
    assert gone.error_message in html
    # Row order, the summary, and the links.
    assert html.index("Shoe") < html.index(">Hat<")
    assert "Products 1–2 of 2" in html
    assert "JPEG, quality 50" in html
    assert f'href="{ADMIN}{finished.pk}/status/?format=json"' in html
    assert f'href="{ADMIN}{finished.pk}/output/"' in html
    assert 'id="retry-failed" >' in html or 'id="retry-failed">' in html  # enabled
    assert 'data-finished="true"' in html


def test_request_page_paginates_50_products_in_two_queries(browser: Client, acme: ApiClient) -> None:
    obj = ProcessingRequest.objects.create(
        owner=acme.user, original_filename="big.csv", products_total=120, images_total=240
    )
    products = Product.objects.bulk_create(
        Product(request=obj, position=i, serial_number=f"S{i:03d}", product_name=f"Product {i}") for i in range(120)
    )
    ProductImage.objects.bulk_create(
        ProductImage(request=obj, product=p, position=j, source_url=f"https://shop.example/{p.position}-{j}.jpg")
        for p in products
        for j in range(2)
    )
    first = browser.get(f"{ADMIN}{obj.pk}/change/").content.decode()
    assert first.count('class="ip-product-row"') == PRODUCTS_PER_PAGE
    assert "Products 1–50 of 120" in first
    assert "S000" in first and "S049" in first and "S050" not in first
    assert 'data-finished="false"' in first  # pending: the page polls its progress
    with CaptureQueriesContext(connection) as queries:
        last = browser.get(f"{ADMIN}{obj.pk}/change/", {"page": 3}).content.decode()
    assert last.count('class="ip-product-row"') == 20
    assert "Products 101–120 of 120" in last
    assert "S119" in last and "S099" not in last
    product_queries = [q for q in queries if "products_product" in q["sql"] or "products_productimage" in q["sql"]]
    assert len(product_queries) == 2, [q["sql"] for q in product_queries]
    assert not any("OFFSET" in q["sql"] for q in product_queries)
    past = browser.get(f"{ADMIN}{obj.pk}/change/", {"page": 99})
    assert past.status_code == 200  # clamped to the last
    assert "Products 101–120 of 120" in past.content.decode()


def test_request_page_lists_failed_images_alone(browser: Client, finished: ProcessingRequest) -> None:
    html = browser.get(f"{ADMIN}{finished.pk}/change/", {"show": "failed"}).content.decode()
    assert "Failed images 1–1 of 1" in html
    assert html.count('class="ip-image ip-image--failed"') == 1
    assert "gone.jpg" in html
    assert "shoe.jpg" not in html


def test_progress_json_follows_the_counters(browser: Client, finished: ProcessingRequest) -> None:
    body = browser.get(f"{ADMIN}{finished.pk}/progress/").json()
    assert body["finished"] is True
    assert (body["images_total"], body["images_done"], body["images_failed"]) == (3, 2, 1)
    assert body["percent"] == 100.0
    assert body["rate"] is not None and body["eta_seconds"] is None  # finished: nothing left
    assert "ip-badge--completed_with_errors" in body["status_html"]
    assert 'class="ip-progress__failed" style="width:33.33%"' in body["progress_html"]


def test_while_it_runs_the_cards_and_status_row_refresh_from_the_progress_json(
    browser: Client, acme: ApiClient
) -> None:
    obj = ProcessingRequest.objects.create(
        owner=acme.user,
        status=RequestStatus.PENDING,
        images_total=10,
        original_filename="live.csv",
    )
    page = browser.get(f"{ADMIN}{obj.pk}/change/").content.decode()
    # Every figure that moves is inside an element the page's script replaces from the JSON.
    for element in ('id="request-cards"', 'id="card-done"', 'id="card-saved"', 'id="card-duration"'):
        assert element in page
    assert 'id="detail-status"' in page and 'id="detail-started"' in page
    for replaced in ('"request-cards").innerHTML = p.cards_html', '"detail-status").innerHTML = p.status_html'):
        assert replaced in page

    ProcessingRequest.objects.filter(pk=obj.pk).update(
        status=RequestStatus.PROCESSING,
        started_at=timezone.now() - timedelta(seconds=42),
        images_done=5,
        images_failed=1,
        bytes_in=10_000,
        bytes_out=4_000,
    )
    body = browser.get(f"{ADMIN}{obj.pk}/progress/").json()
    cards = body["cards_html"]
    assert re.search(r'id="card-done">5 <span class="ip-quiet">/ 10</span>', cards)
    assert "1 failed" in cards
    assert "saved 5.9 KB, 60.0%" in cards
    assert re.search(r'id="card-duration">4[2-9]\.\d s<', cards)
    assert "ip-badge--processing" in body["status_html"]
    assert body["started_html"] != "–"


def test_a_larger_output_is_shown_as_larger_never_as_a_saving(browser: Client, finished: ProcessingRequest) -> None:
    # The engine keeps the input rather than store a larger output; counters that say
    # otherwise are still shown as they are.
    ProcessingRequest.objects.filter(pk=finished.pk).update(bytes_in=10_000, bytes_out=13_800)
    image = ProductImage.objects.filter(request=finished, status=ImageStatus.DONE).first()
    assert image is not None
    ProductImage.objects.filter(pk=image.pk).update(bytes_in=1_000, bytes_out=1_380)
    listing = browser.get(ADMIN).content.decode()
    page = browser.get(f"{ADMIN}{finished.pk}/change/").content.decode()
    images = browser.get("/admin/products/productimage/", {"q": str(finished.pk)}).content.decode()
    assert (
        '<span class="ip-larger" title="The output is larger than its input">+3.7 KB, +38.0% larger</span>' in listing
    )
    assert "+3.7 KB, +38.0% larger" in page and ">Larger</div>" in page
    assert "+38.0% larger" in page  # the image card
    assert "+38.0% larger" in images
    for html in (listing, page, images):
        assert "-38" not in html and "−38" not in html


def test_staff_read_the_status_json_and_output_csv_of_any_owner(
    browser: Client, finished: ProcessingRequest, staff: User
) -> None:
    assert finished.owner != staff
    # The client API answers 404 to anyone but the owner, staff included ...
    assert browser.get(f"/csv/status/{finished.pk}").status_code == 404
    # ... so the admin serves the same answers to staff.
    status = browser.get(f"{ADMIN}{finished.pk}/status/", {"format": "json"})
    assert status.status_code == 200
    body = status.json()
    assert body["request_id"] == str(finished.pk)
    assert [p["serial_number"] for p in body["products"]] == ["1", "2"]
    assert body["products"][1]["errors"][0]["code"] == "http_404"
    output = browser.get(f"{ADMIN}{finished.pk}/output/")
    assert output.status_code == 200
    assert output["Content-Type"].startswith("text/csv")
    table = list(csv.reader(io.StringIO(b"".join(output.streaming_content).decode())))
    assert table[0] == ["S. No.", "Product Name", "Input Image Urls", "Output Image Urls"]
    assert table[2][3] == ""


def test_status_json_and_pages_need_a_staff_login(client: Client, finished: ProcessingRequest) -> None:
    for path in (f"{ADMIN}{finished.pk}/status/", f"{ADMIN}{finished.pk}/output/", f"{ADMIN}{finished.pk}/change/"):
        response = client.get(path)
        assert response.status_code == 302
        assert response["Location"].startswith("/admin/login/")


# --- Actions ----------------------------------------------------------------------------------------


def test_retry_button_requeues_the_failed_images(
    browser: Client, finished: ProcessingRequest, image_server: ImageServer
) -> None:
    image_server.add("/gone.jpg", make_image(200, 200))
    response = browser.post(f"{ADMIN}{finished.pk}/retry/", {"post": "yes"}, follow=True)
    assert "Re-queued 1 failed image." in response.content.decode()
    finished.refresh_from_db()
    assert (finished.status, finished.images_done, finished.images_failed) == ("completed", 3, 0)


def test_retry_of_an_unfinished_request_says_why(browser: Client, acme: ApiClient) -> None:
    obj = ProcessingRequest.objects.create(owner=acme.user, status=RequestStatus.PROCESSING, images_total=1)
    html = browser.post(f"{ADMIN}{obj.pk}/retry/", {"post": "yes"}, follow=True).content.decode()
    assert "The request is processing; retry it once it has finished." in html


def test_retry_and_resend_ask_first_on_the_page_and_in_the_list(
    browser: Client, finished: ProcessingRequest, acme: ApiClient, image_server: ImageServer
) -> None:
    image_server.add("/gone.jpg", make_image(200, 200))
    ApiClient.objects.filter(pk=acme.pk).update(default_webhook_url="https://hooks.example/acme")
    hits = image_server.hits["/gone.jpg"]
    # The request page's buttons (a POST without the confirmation), a GET, and the list's
    # actions: each only asks, and says what would happen.
    for answer in (
        browser.post(f"{ADMIN}{finished.pk}/retry/"),
        browser.get(f"{ADMIN}{finished.pk}/retry/"),
        browser.post(ADMIN, {"action": "retry_failed_images", "_selected_action": [str(finished.pk)]}),
    ):
        html = answer.content.decode()
        assert answer.status_code == 200 and "Yes, retry" in html
        assert "1 failed image of this request" in html or "1 failed image of 1 request" in html
    for answer in (
        browser.post(f"{ADMIN}{finished.pk}/resend-webhook/"),
        browser.post(ADMIN, {"action": "resend_webhooks", "_selected_action": [str(finished.pk)]}),
    ):
        html = answer.content.decode()
        assert answer.status_code == 200 and "Yes, resend" in html and "https://hooks.example/acme" in html
    delivery = WebhookDelivery.objects.filter(request=finished).first()
    if delivery is not None:
        listing = browser.post(
            "/admin/requests_app/webhookdelivery/", {"action": "resend_webhook", "_selected_action": [str(delivery.pk)]}
        ).content.decode()
        assert "Yes, resend" in listing and 'name="action" value="resend_webhook"' in listing
    finished.refresh_from_db()
    assert (finished.status, finished.images_failed) == (RequestStatus.COMPLETED_WITH_ERRORS, 1)
    assert image_server.hits["/gone.jpg"] == hits
    assert WebhookDelivery.objects.filter(request=finished).count() == (1 if delivery else 0)

    # The confirmation's own form acts.
    confirmed = browser.post(
        ADMIN, {"action": "retry_failed_images", "_selected_action": [str(finished.pk)], "post": "yes"}, follow=True
    )
    assert "Re-queued 1 failed image of 1 request." in confirmed.content.decode()
    finished.refresh_from_db()
    assert finished.images_failed == 0


def test_reprocess_asks_first_then_starts_from_scratch(
    browser: Client, finished: ProcessingRequest, image_server: ImageServer
) -> None:
    confirm = browser.get(f"{ADMIN}{finished.pk}/reprocess/")
    assert "Yes, reprocess" in confirm.content.decode()
    finished.refresh_from_db()
    assert finished.status == RequestStatus.COMPLETED_WITH_ERRORS
    hits = image_server.hits["/shoe.jpg"]
    image_server.add("/gone.jpg", make_image(200, 200))
    response = browser.post(f"{ADMIN}{finished.pk}/reprocess/", {"post": "yes"}, follow=True)
    assert "Reprocessing 3 images from scratch." in response.content.decode()
    finished.refresh_from_db()
    assert (finished.status, finished.images_done, finished.images_failed) == ("completed", 3, 0)
    assert image_server.hits["/shoe.jpg"] == hits + 1


def test_reprocess_confirmation_counts_what_the_service_would_reprocess(
    browser: Client, finished: ProcessingRequest, acme: ApiClient
) -> None:
    running = ProcessingRequest.objects.create(
        owner=acme.user, status=RequestStatus.PROCESSING, images_total=7, original_filename="running.csv"
    )
    data = {"action": "reprocess_requests", "_selected_action": [str(finished.pk), str(running.pk)]}
    html = browser.post(ADMIN, data).content.decode()
    assert "Yes, reprocess" in html
    assert "(3 images)" in html  # the finished request's; the running one is skipped ...
    # ... and named (the admin's messages start with a capital).
    assert "Running.csv: The request is processing; reprocess it once it has finished." in html
    finished.refresh_from_db()
    running.refresh_from_db()
    assert (finished.status, finished.images_done) == (RequestStatus.COMPLETED_WITH_ERRORS, 2)
    assert running.status == RequestStatus.PROCESSING


def test_list_actions_call_the_services(
    browser: Client, finished: ProcessingRequest, image_server: ImageServer, acme: ApiClient
) -> None:
    running = ProcessingRequest.objects.create(owner=acme.user, status=RequestStatus.PROCESSING, images_total=1)
    image_server.add("/gone.jpg", make_image(200, 200))
    data = {"action": "retry_failed_images", "_selected_action": [str(finished.pk), str(running.pk)], "post": "yes"}
    html = browser.post(ADMIN, data, follow=True).content.decode()
    assert "Re-queued 1 failed image of 1 request." in html
    assert "retry it once it has finished" in html  # the running one, skipped with its reason
    finished.refresh_from_db()
    assert finished.images_failed == 0

    data = {"action": "reprocess_requests", "_selected_action": [str(finished.pk)]}
    confirm = browser.post(ADMIN, data)
    assert "Yes, reprocess" in confirm.content.decode()
    html = browser.post(ADMIN, {**data, "post": "yes"}, follow=True).content.decode()
    assert "Reprocessing 3 images of 1 request." in html

    download = browser.post(ADMIN, {"action": "download_output_csv", "_selected_action": [str(finished.pk)]})
    assert download.status_code == 302
    assert download["Location"] == f"{ADMIN}{finished.pk}/output/"
    both = {"action": "download_output_csv", "_selected_action": [str(finished.pk), str(running.pk)]}
    assert "Select one request" in browser.post(ADMIN, both, follow=True).content.decode()


def test_resend_webhook_sends_the_completion_event_again(
    browser: Client, acme: ApiClient, image_server: ImageServer, receiver: Receiver, settings: Any
) -> None:
    settings.WEBHOOK_TIMEOUT = 2.0
    url = image_server.add("/one.jpg", make_image(100, 100))
    obj = upload(acme.user, [("1", "One", [url])], webhook_url=receiver.url())
    assert len(receiver.hits) == 1
    first = receiver.hits[0]

    html = browser.post(f"{ADMIN}{obj.pk}/resend-webhook/", {"post": "yes"}, follow=True).content.decode()
    assert "The completion webhook is on its way." in html
    deliveries = list(WebhookDelivery.objects.filter(request=obj).order_by("attempt"))
    assert [d.attempt for d in deliveries] == [1, 2]
    assert len(receiver.hits) == 2
    assert receiver.hits[1].headers["webhook-id"] == first.headers["webhook-id"]
    assert receiver.hits[1].body == first.body
    page = browser.get(f"{ADMIN}{obj.pk}/change/").content.decode()
    assert 'id="webhook-deliveries"' in page
    assert page.count("HTTP 200") == 2

    no_hook = upload(acme.user, [("1", "One", [url])])
    html = browser.post(f"{ADMIN}{no_hook.pk}/resend-webhook/", {"post": "yes"}, follow=True).content.decode()
    assert "no webhook URL" in html


def test_delivery_log_lists_attempts_and_its_resend_names_what_it_cannot_send(browser: Client, acme: ApiClient) -> None:
    quiet = ProcessingRequest.objects.create(
        owner=acme.user, status=RequestStatus.COMPLETED, completed_at=timezone.now(), original_filename="quiet.csv"
    )
    # An attempt logged when the request still had a webhook URL; neither it nor its client has one now.
    delivery = WebhookDelivery.objects.create(
        request=quiet,
        event_id="evt_quiet",
        event_type="request.completed",
        url="https://hooks.example/quiet",
        status="failed",
        error="HTTP 500",
        payload="{}",
    )
    listing = browser.get("/admin/requests_app/webhookdelivery/").content.decode()
    assert result_rows(listing) == 1
    assert f'href="{ADMIN}{quiet.pk}/change/"' in listing
    html = browser.post(
        "/admin/requests_app/webhookdelivery/",
        {"action": "resend_webhook", "_selected_action": [str(delivery.pk)], "post": "yes"},
        follow=True,
    ).content.decode()
    assert "Quiet.csv: " in html and "no webhook URL" in html  # the admin's messages start with a capital
    assert "Resending the completion webhook" not in html
    assert list(WebhookDelivery.objects.filter(request=quiet)) == [delivery]


def test_staff_without_change_permission_see_but_cannot_act(finished: ProcessingRequest) -> None:
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_processingrequest"))
    client = Client()
    client.force_login(viewer)
    page = client.get(f"{ADMIN}{finished.pk}/change/").content.decode()
    assert "ip-output-thumb" in page
    assert 'id="retry-failed"' not in page
    assert client.post(f"{ADMIN}{finished.pk}/retry/", {"post": "yes"}).status_code == 403
    assert client.get(f"{ADMIN}{finished.pk}/status/?format=json").status_code == 200
    assert client.get(f"{ADMIN}upload/").status_code == 403
    finished.refresh_from_db()
    assert finished.images_failed == 1


# --- Uploading through the admin ------------------------------------------------------------------


def test_upload_page_starts_a_request_for_the_logged_in_user(
    browser: Client, staff: User, image_server: ImageServer
) -> None:
    url = image_server.add("/u.jpg", make_image(300, 300))
    file = io.BytesIO(csv_bytes([("7", "Lamp", [url])]))
    file.name = "lamps.csv"
    response = browser.post(
        f"{ADMIN}upload/", {"file": file, "quality": "70", "output_format": "webp", "webhook_url": ""}
    )
    obj = ProcessingRequest.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"{ADMIN}{obj.pk}/change/"
    assert (obj.owner, obj.original_filename, obj.quality, obj.output_format) == (staff, "lamps.csv", 70, "webp")
    assert obj.status == RequestStatus.COMPLETED
    assert ProductImage.objects.get().output_name.endswith(".webp")
    assert browser.get(f"{ADMIN}add/")["Location"] == f"{ADMIN}upload/"


def test_upload_page_lists_every_csv_error_and_stores_nothing(browser: Client) -> None:
    file = io.BytesIO(b"S. No.,Product Name,Input Image Urls\n1,Lamp,ftp://x/a.jpg\n1,Desk,https://x.example/b.jpg\n")
    file.name = "bad.csv"
    response = browser.post(f"{ADMIN}upload/", {"file": file, "quality": "50", "output_format": "jpeg"})
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="csv-errors"' in html
    assert "<td>2</td><td>Input Image Urls</td>" in html
    assert "<td>3</td><td>S. No.</td>" in html
    assert "Nothing was stored." in html
    assert ProcessingRequest.objects.count() == 0


def test_upload_page_refuses_a_csv_over_the_size_limit(browser: Client, settings: Any) -> None:
    settings.CSV_MAX_BYTES = 100
    file = io.BytesIO(b"S. No.,Product Name,Input Image Urls\n" + b"1,Lamp,https://x.example/a.jpg\n" * 5)
    file.name = "big.csv"
    response = browser.post(f"{ADMIN}upload/", {"file": file, "quality": "50", "output_format": "jpeg"})
    assert response.status_code == 200
    field = re.search(r'<div class="form-row errors field-file">(.*?)</div>', response.content.decode(), re.S)
    assert field and "The CSV is larger than the limit" in field.group(1)
    assert ProcessingRequest.objects.count() == 0


def test_upload_page_says_when_too_many_requests_are_in_progress(browser: Client, staff: User, settings: Any) -> None:
    settings.MAX_ACTIVE_REQUESTS_PER_CLIENT = 1
    ProcessingRequest.objects.create(owner=staff, status=RequestStatus.PROCESSING)
    file = io.BytesIO(b"S. No.,Product Name,Input Image Urls\n1,Lamp,https://x.example/a.jpg\n")
    file.name = "ok.csv"
    response = browser.post(f"{ADMIN}upload/", {"file": file, "quality": "50", "output_format": "jpeg"})
    assert response.status_code == 200
    assert "upload again once one of them has finished" in response.content.decode()
    assert ProcessingRequest.objects.count() == 1


def test_upload_page_refuses_a_bad_webhook_url_and_quality(browser: Client) -> None:
    file = io.BytesIO(b"S. No.,Product Name,Input Image Urls\n1,Lamp,https://x.example/a.jpg\n")
    file.name = "ok.csv"
    response = browser.post(
        f"{ADMIN}upload/",
        {"file": file, "quality": "120", "output_format": "jpeg", "webhook_url": "http://169.254.169.254/hook"},
    )
    html = response.content.decode()
    # Both refusals at once, each under its field, in the words of RequestOptions.
    quality = re.search(r'<div class="form-row errors field-quality">(.*?)</div>', html, re.S)
    assert quality and "Quality must be a whole number from 1 to 95." in quality.group(1)
    webhook = re.search(r'<div class="form-row errors field-webhook_url">(.*?)</div>', html, re.S)
    assert webhook and ("webhooks are not sent there" in webhook.group(1) or "must use https" in webhook.group(1))
    assert ProcessingRequest.objects.count() == 0


# --- API clients and keys ----------------------------------------------------------------------------


def test_add_client_shows_its_key_once_and_the_key_works(browser: Client) -> None:
    response = browser.post("/admin/requests_app/apiclient/add/", {"name": "globex", "default_webhook_url": ""})
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    html = response.content.decode()
    raw = re.search(r'<code id="api-key">(ipk_[^<]+)</code>', html).group(1)
    client = ApiClient.objects.get(user__username="globex")
    assert client.webhook_secret in html
    key = ApiKey.objects.get(client=client)
    assert key.key_hash == ApiKey.hash(raw) and raw not in (key.key_hash, key.prefix)

    api = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert api.get("/csv/requests").status_code == 200
    page = browser.get(f"/admin/requests_app/apiclient/{client.pk}/change/").content.decode()
    assert raw not in page
    assert f"ipk_{key.prefix}_…" in page
    listing = browser.get("/admin/requests_app/apiclient/").content.decode()
    assert f"ipk_{key.prefix}_…" in listing

    again = browser.post("/admin/requests_app/apiclient/add/", {"name": "globex"})
    assert "exists already" in again.content.decode()


def test_add_client_refuses_a_bad_webhook_url_and_creates_nothing(browser: Client) -> None:
    response = browser.post(
        "/admin/requests_app/apiclient/add/", {"name": "initech", "default_webhook_url": "http://169.254.169.254/hook"}
    )
    assert response.status_code == 200
    field = re.search(
        r'<div class="form-row errors field-default_webhook_url">(.*?)</div>', response.content.decode(), re.S
    )
    assert field and ("webhooks are not sent there" in field.group(1) or "must use https" in field.group(1))
    assert not User.objects.filter(username="initech").exists()
    assert not ApiClient.objects.exists()


def test_revoke_a_key_from_its_client_page(browser: Client, acme: ApiClient) -> None:
    raw = api_key_create(client=acme)
    prefix = raw.split("_")[1]
    api = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert api.get("/csv/requests").status_code == 200
    revoke_url = f"/admin/requests_app/apiclient/{acme.pk}/keys/{prefix}/revoke/"
    assert revoke_url in browser.get(f"/admin/requests_app/apiclient/{acme.pk}/change/").content.decode()
    assert "Revoke the key" in browser.get(revoke_url).content.decode()
    assert ApiKey.objects.get(prefix=prefix).revoked_at is None
    response = browser.post(revoke_url, {"post": "yes"})
    assert response.status_code == 302
    assert ApiKey.objects.get(prefix=prefix).revoked_at is not None
    assert api.get("/csv/requests").status_code == 401


def test_new_key_and_secret_rotation(browser: Client, acme: ApiClient) -> None:
    base = f"/admin/requests_app/apiclient/{acme.pk}"
    html = browser.post(f"{base}/new-key/").content.decode()
    raw = re.search(r'<code id="api-key">(ipk_[^<]+)</code>', html).group(1)
    assert ApiKey.objects.filter(client=acme, key_hash=ApiKey.hash(raw)).exists()

    old = acme.webhook_secret
    assert "Rotate the secret" in browser.get(f"{base}/rotate-webhook-secret/").content.decode()
    html = browser.post(f"{base}/rotate-webhook-secret/").content.decode()
    acme.refresh_from_db()
    assert acme.webhook_secret != old and acme.previous_webhook_secret == old
    assert f'<code id="webhook-secret">{acme.webhook_secret}</code>' in html


def test_client_change_form_sets_the_default_webhook_url_and_re_enables(
    browser: Client, acme: ApiClient, receiver: Receiver
) -> None:
    ApiClient.objects.filter(pk=acme.pk).update(webhook_disabled_at=timezone.now(), webhook_disabled_reason="410")
    secret = acme.webhook_secret
    response = browser.post(
        f"/admin/requests_app/apiclient/{acme.pk}/change/",
        {
            "default_webhook_url": receiver.url(),
            "re_enable_webhooks": "on",
            "keys-TOTAL_FORMS": "0",
            "keys-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    acme.refresh_from_db()
    assert acme.default_webhook_url == receiver.url()
    assert acme.webhook_disabled_at is None
    assert acme.webhook_secret == secret
    bad = browser.post(
        f"/admin/requests_app/apiclient/{acme.pk}/change/",
        {"default_webhook_url": "https://10.0.0.1/hook", "keys-TOTAL_FORMS": "0", "keys-INITIAL_FORMS": "0"},
    )
    assert bad.status_code == 200
    field = re.search(r'<div class="form-row errors field-default_webhook_url">(.*?)</div>', bad.content.decode(), re.S)
    assert field and "webhooks are not sent there" in field.group(1)
    acme.refresh_from_db()
    assert acme.default_webhook_url == receiver.url()


def test_api_keys_list_finds_and_revokes_by_prefix(browser: Client, acme: ApiClient) -> None:
    raw = api_key_create(client=acme)
    prefix = raw.split("_")[1]
    html = browser.get("/admin/requests_app/apikey/", {"q": raw}).content.decode()
    assert f"ipk_{prefix}_…" in html
    key = ApiKey.objects.get(prefix=prefix)
    browser.post("/admin/requests_app/apikey/", {"action": "revoke_keys", "_selected_action": [str(key.pk)]})
    key.refresh_from_db()
    assert key.revoked_at is not None


# --- Products and images -------------------------------------------------------------------------


def test_products_and_images_are_found_by_request_id(browser: Client, finished: ProcessingRequest) -> None:
    products = browser.get("/admin/products/product/", {"q": str(finished.pk)}).content.decode()
    assert result_rows(products) == 2
    failed = browser.get("/admin/products/productimage/", {"status__exact": "failed"}).content.decode()
    assert result_rows(failed) == 1
    assert "gone.jpg" in failed
    # A failed input is linked, never loaded (ImageCells.input).
    assert 'src="http://' not in failed
    assert '/gone.jpg" target="_blank" rel="noopener noreferrer"><span>no preview</span></a>' in failed
    images = browser.get("/admin/products/productimage/", {"q": str(finished.pk)}).content.decode()
    assert result_rows(images) == 3
    product = Product.objects.get(request=finished, position=0)
    page = browser.get(f"/admin/products/product/{product.pk}/change/").content.decode()
    assert page.count('referrerpolicy="no-referrer"') == 2
    assert ImageStatus.DONE.label in page


# --- The browsable API with a session ----------------------------------------------------------


def test_browsable_api_renders_every_endpoint_for_a_session(acme: ApiClient, image_server: ImageServer) -> None:
    browser = Client()
    browser.force_login(acme.user)
    html = {"HTTP_ACCEPT": "text/html"}

    form = browser.get("/csv/upload", **html)
    assert form.status_code == 200  # the upload form, without a 405 (tests/test_browsable_api.py)
    page = form.content.decode()
    assert 'enctype="multipart/form-data"' in page
    assert re.search(r'<input name="file"\s+type="file"', page)

    url = image_server.add("/b.jpg", make_image(120, 80))
    file = io.BytesIO(csv_bytes([("1", "Cap", [url])]))
    file.name = "cap.csv"
    created = browser.post(
        "/csv/upload", {"file": file, "quality": "", "webhook_url": "", "output_format": "jpeg"}, **html
    )
    assert created.status_code == 202
    assert created["Content-Type"].startswith("text/html")
    obj = ProcessingRequest.objects.get()
    assert obj.owner == acme.user

    for path in (f"/csv/status/{obj.pk}", "/csv/requests"):
        response = browser.get(path, **html)
        assert response.status_code == 200, path
        assert str(obj.pk) in response.content.decode()
    output = browser.get(f"/csv/output/{obj.pk}", **html)
    assert output.status_code == 200
    assert output["Content-Type"].startswith("text/csv")

    retry = browser.get(f"/csv/requests/{obj.pk}/retry", **html).content.decode()
    assert 'name="original_filename"' not in retry  # a bare POST button, no unrelated fields
    assert browser.post(f"/csv/requests/{obj.pk}/retry", **html).status_code == 202

    bad = io.BytesIO(b"S. No.,Product Name,Input Image Urls\n1,Cap,ftp://x/a.jpg\n")
    bad.name = "bad.csv"
    error = browser.post("/csv/upload", {"file": bad}, **html)
    assert error.status_code == 400
    assert "only http and https URLs are allowed" in error.content.decode()


def test_browsable_api_session_posts_need_the_csrf_token(acme: ApiClient) -> None:
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(acme.user)
    obj = ProcessingRequest.objects.create(owner=acme.user, status=RequestStatus.COMPLETED)
    refused = browser.post(f"/csv/requests/{obj.pk}/retry", HTTP_ACCEPT="application/json")
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["detail"]
