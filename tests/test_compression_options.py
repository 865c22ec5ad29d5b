"""Issue 14's options everywhere an option exists: quality (a number or an automatic level),
output_format (jpeg, webp, avif, auto) and keep_copyright, through the upload API, the admin
upload page, process_csv and reprocess; and what the engine made of each image (format,
candidate, quality chosen, score) in the status answer, the webhook payload and the admin.

Every request here is processed for real (the sync cluster of the test settings): real
encodes, and the outputs are read back from storage and decoded.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from PIL import Image
from rest_framework.test import APIClient

from imageproc.engine.compress import CANDIDATES
from products.models import ImageStatus, ProductImage
from requests_app.models import ApiClient, ProcessingRequest, WebhookDelivery
from requests_app.services.errors import InvalidOptions
from requests_app.services.requests import RequestOptions, reprocess_options
from tests.conftest import ImageServer, csv_bytes, make_image
from tests.test_api import Documented
from tests.test_copyright import ARTIST, COPYRIGHT, MAKE, exif, photo
from tests.test_webhooks import Receiver, settled, verify

pytestmark = pytest.mark.django_db(transaction=True)

ADMIN = "/admin/requests_app/processingrequest/"


def upload(api: APIClient, rows: list[tuple[str, str, list[str]]], **data: str) -> Any:
    file = io.BytesIO(csv_bytes(rows))
    file.name = "catalogue.csv"
    return api.post("/csv/upload", {"file": file, **data}, format="multipart")


def stored(image: ProductImage) -> tuple[Image.Image, bytes]:
    """An image's output as stored, decoded."""
    with default_storage.open(image.output_name) as handle:
        data = handle.read()
    decoded = Image.open(io.BytesIO(data))
    decoded.load()
    return decoded, data


def images_of(request_id: Any) -> list[ProductImage]:
    return list(ProductImage.objects.filter(request_id=request_id).order_by("product__position", "position"))


@pytest.fixture
def receiver() -> Any:
    server = Receiver()
    yield server
    server.close()


# --- RequestOptions -------------------------------------------------------------------------------


def test_auto_is_stored_as_auto_good_and_format_auto_implies_it(settings: Any) -> None:
    settings.IMAGE_DEFAULT_QUALITY = 50
    assert RequestOptions(quality="auto").quality == "auto:good"
    assert RequestOptions(output_format="auto").quality == "auto:good"
    assert RequestOptions(output_format="avif").quality == 50
    assert RequestOptions(quality="auto:eco", output_format="avif").processing_fields == {
        "quality": None,
        "quality_mode": "auto:eco",
        "output_format": "avif",
        "keep_copyright": True,
    }
    assert RequestOptions(quality=70, keep_copyright=False).processing_fields == {
        "quality": 70,
        "quality_mode": "",
        "output_format": "jpeg",
        "keep_copyright": False,
    }


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"quality": "auto:best"}, "quality"),
        ({"quality": 0}, "quality"),
        ({"quality": "70"}, "quality"),  # the interfaces turn digits into a number; text is not one
        ({"quality": 60, "output_format": "auto"}, "quality"),
        ({"output_format": "png"}, "output_format"),
        ({"keep_copyright": "no"}, "keep_copyright"),
    ],
)
def test_options_refuse_each_bad_value_by_its_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidOptions) as info:
        RequestOptions(**options)
    assert list(info.value.errors) == [field]


# --- The upload API -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"quality": "auto:best"}, "quality"),
        ({"quality": "0"}, "quality"),
        ({"quality": "96"}, "quality"),
        ({"quality": "7.5"}, "quality"),
        ({"quality": "60", "output_format": "auto"}, "quality"),
        ({"output_format": "heic"}, "output_format"),
        ({"output_format": "AVIF"}, "output_format"),
        ({"keep_copyright": "maybe"}, "keep_copyright"),
    ],
)
def test_upload_refuses_a_bad_option_with_a_400_naming_it(api: APIClient, data: dict[str, str], field: str) -> None:
    response = upload(api, [("1", "A", ["http://x.example/a.jpg"])], **data)
    assert response.status_code == 400, response.content
    body = response.json()
    assert list(body) == [field]
    assert body[field] and all(isinstance(message, str) and message for message in body[field])
    assert ProcessingRequest.objects.count() == 0


def test_upload_auto_eco_avif_records_each_image_and_answers_as_documented(
    api: APIClient, image_server: ImageServer
) -> None:
    jpeg = image_server.add("/p.jpg", make_image(640, 480))
    png = image_server.add("/p.png", make_image(320, 240, "PNG"), content_type="image/png")
    response = upload(api, [("1", "Chair", [jpeg, png])], quality="auto:eco", output_format="avif")
    assert response.status_code == 202, response.content
    request_id = response.json()["request_id"]

    request = ProcessingRequest.objects.get(pk=request_id)
    assert (request.quality, request.quality_mode, request.output_format, request.keep_copyright) == (
        None,
        "auto:eco",
        "avif",
        True,
    )
    documented = Documented(api)
    status = documented.check(api.get(f"/csv/status/{request_id}"))
    assert status["status"] == "completed"
    assert status["options"] == {"quality": "auto:eco", "output_format": "avif", "keep_copyright": True, "sizes": []}

    [chair] = status["products"]
    rows = images_of(request_id)
    assert [record["url"] for record in chair["images"]] == [jpeg, png]
    for record, row, size in zip(chair["images"], rows, [(640, 480), (320, 240)], strict=True):
        assert row.status == ImageStatus.DONE
        assert (row.output_format, row.candidate, row.encoder) == ("avif", "reencoded", "libaom")
        assert row.quality_chosen is not None and 1 <= row.quality_chosen <= 95
        assert row.score is not None and 0 < row.score <= 100
        assert record == {
            "url": row.source_url,
            "status": "done",
            "output_url": record["output_url"],
            "format": "avif",
            "candidate": "reencoded",
            "quality_chosen": row.quality_chosen,
            "score": row.score,
            "encoder": "libaom",
            "bytes_in": row.bytes_in,
            "bytes_out": row.bytes_out,
        }
        assert record["output_url"].endswith(row.output_name)
        decoded, data = stored(row)
        assert (decoded.format, decoded.size) == ("AVIF", size)
        assert len(data) == row.bytes_out < row.bytes_in


def test_upload_output_format_auto_takes_auto_good_and_a_failed_image_has_no_record(
    api: APIClient, image_server: ImageServer
) -> None:
    url = image_server.add("/a.jpg", make_image(400, 300))
    missing = image_server.base_url + "/missing.jpg"
    response = upload(api, [("1", "A", [url, missing])], output_format="auto", keep_copyright="false")
    assert response.status_code == 202, response.content
    status = api.get(f"/csv/status/{response.json()['request_id']}").json()
    assert status["options"] == {"quality": "auto:good", "output_format": "auto", "keep_copyright": False, "sizes": []}
    done, failed = status["products"][0]["images"]
    assert done["format"] in ("jpeg", "webp", "avif")
    assert done["candidate"] in CANDIDATES
    assert done["score"] is not None
    assert failed["status"] == "failed"
    assert (failed["format"], failed["candidate"], failed["quality_chosen"], failed["score"]) == (None,) * 4
    [row] = [image for image in images_of(response.json()["request_id"]) if image.status == ImageStatus.DONE]
    decoded, _ = stored(row)
    assert decoded.format.lower() == done["format"]


def test_a_numeric_quality_is_recorded_without_a_score(api: APIClient, image_server: ImageServer) -> None:
    url = image_server.add("/n.jpg", make_image(300, 200))
    response = upload(api, [("1", "A", [url])], quality="30", output_format="webp")
    record = api.get(f"/csv/status/{response.json()['request_id']}").json()["products"][0]["images"][0]
    assert (record["format"], record["candidate"], record["quality_chosen"], record["score"]) == (
        "webp",
        "reencoded",
        30,
        None,
    )
    assert record["encoder"] == "libwebp"


def _copyright_source(image_server: ImageServer) -> str:
    buf = io.BytesIO()
    photo((320, 200)).save(buf, "JPEG", quality=95, exif=exif())
    return image_server.add("/c.jpg", buf.getvalue())


def test_keep_copyright_false_strips_it_and_the_default_keeps_it(api: APIClient, image_server: ImageServer) -> None:
    url = _copyright_source(image_server)
    kept = upload(api, [("1", "A", [url])], quality="40").json()["request_id"]
    dropped = upload(api, [("1", "A", [url])], quality="40", keep_copyright="false").json()["request_id"]
    assert ProcessingRequest.objects.get(pk=dropped).keep_copyright is False

    [kept_image], [dropped_image] = images_of(kept), images_of(dropped)
    assert kept_image.candidate == dropped_image.candidate == "reencoded"
    kept_exif = stored(kept_image)[0].getexif()
    assert kept_exif.get(ARTIST) == "Jane Doe"
    assert COPYRIGHT in kept_exif
    assert MAKE not in kept_exif
    dropped_exif = stored(dropped_image)[0].getexif()
    assert ARTIST not in dropped_exif and COPYRIGHT not in dropped_exif


# --- The webhook payload --------------------------------------------------------------------------


def test_the_webhook_payload_carries_the_options_and_each_images_record(
    api: APIClient, image_server: ImageServer, receiver: Receiver
) -> None:
    url = image_server.add("/w.jpg", make_image(400, 300))
    response = upload(
        api,
        [("1", "A", [url, image_server.base_url + "/gone.jpg"])],
        quality="auto:high",
        output_format="webp",
        webhook_url=receiver.url(),
    )
    assert response.status_code == 202, response.content
    request_id = response.json()["request_id"]
    (delivery,) = settled(request_id)
    assert delivery.status == "succeeded"
    (hit,) = receiver.hits
    client = ApiClient.objects.get(user__username="acme")
    data = verify(client.webhook_secret, hit)["data"]
    assert data["options"] == {"quality": "auto:high", "output_format": "webp", "keep_copyright": True}
    assert data["images_omitted"] == 0
    done_row = next(image for image in images_of(request_id) if image.status == ImageStatus.DONE)
    assert data["images"] == [
        {
            "url": url,
            "status": "done",
            "format": "webp",
            "candidate": done_row.candidate,
            "quality_chosen": done_row.quality_chosen,
            "score": done_row.score,
            "bytes_in": done_row.bytes_in,
            "bytes_out": done_row.bytes_out,
        },
        {
            "url": image_server.base_url + "/gone.jpg",
            "status": "failed",
            "format": None,
            "candidate": None,
            "quality_chosen": None,
            "score": None,
            "bytes_in": None,
            "bytes_out": None,
        },
    ]
    assert done_row.candidate in CANDIDATES and done_row.score is not None
    assert json.loads(WebhookDelivery.objects.get(request_id=request_id).payload)["data"] == data


# --- The admin ------------------------------------------------------------------------------------


@pytest.fixture
def browser(db: Any) -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("staff", "staff@example.com", "pw"))
    return client


def test_admin_upload_takes_a_level_and_avif_and_shows_each_images_record(
    browser: Client, image_server: ImageServer
) -> None:
    url = image_server.add("/adm.jpg", make_image(400, 300))
    file = io.BytesIO(csv_bytes([("1", "Lamp", [url])]))
    file.name = "lamps.csv"
    response = browser.post(
        f"{ADMIN}upload/", {"file": file, "quality": "auto:eco", "output_format": "avif", "webhook_url": ""}
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    request = ProcessingRequest.objects.get()
    # An unticked box is "drop": the form posts no keep_copyright.
    assert (request.quality_option, request.output_format, request.keep_copyright) == ("auto:eco", "avif", False)
    [image] = images_of(request.pk)
    assert image.score is not None and image.quality_chosen is not None

    page = browser.get(f"{ADMIN}{request.pk}/change/").content.decode()
    assert "AVIF, quality auto:eco, copyright dropped" in page
    record = f"AVIF · reencoded · quality {image.quality_chosen} · score {image.score:.1f} · libaom"
    assert record in page
    listing = browser.get("/admin/products/productimage/").content.decode()
    assert f"AVIF · reencoded · quality {image.quality_chosen} · score {image.score:.1f}" in listing
    detail = browser.get(f"/admin/products/productimage/{image.pk}/change/").content.decode()
    assert "libaom" in detail and "reencoded" in detail


def test_admin_upload_refuses_a_bad_level_on_its_field(browser: Client) -> None:
    file = io.BytesIO(csv_bytes([("1", "Lamp", ["http://x.example/a.jpg"])]))
    file.name = "lamps.csv"
    response = browser.post(f"{ADMIN}upload/", {"file": file, "quality": "auto:max", "output_format": "jpeg"})
    assert response.status_code == 200
    html = response.content.decode()
    assert 'class="form-row errors field-quality"' in html
    assert ProcessingRequest.objects.count() == 0


# --- process_csv and reprocess --------------------------------------------------------------------


def test_process_csv_takes_the_options_as_flags(tmp_path: Any, image_server: ImageServer) -> None:
    url = _copyright_source(image_server)
    catalogue = tmp_path / "catalogue.csv"
    catalogue.write_bytes(csv_bytes([("1", "A", [url])]))
    out = io.StringIO()
    call_command(
        "process_csv",
        str(catalogue),
        "--quality",
        "auto:eco",
        "--format",
        "webp",
        "--no-keep-copyright",
        "--wait",
        stdout=out,
        stderr=io.StringIO(),
    )
    request = ProcessingRequest.objects.get()
    assert (request.quality_option, request.output_format, request.keep_copyright) == ("auto:eco", "webp", False)
    [image] = images_of(request.pk)
    assert (image.status, image.output_format) == (ImageStatus.DONE, "webp")
    decoded, _ = stored(image)
    assert decoded.format == "WEBP"
    assert COPYRIGHT not in decoded.getexif()


def test_process_csv_names_the_flag_of_a_bad_option(tmp_path: Any) -> None:
    catalogue = tmp_path / "catalogue.csv"
    catalogue.write_bytes(csv_bytes([("1", "A", ["http://x.example/a.jpg"])]))
    with pytest.raises(CommandError, match="--quality: Quality must be"):
        call_command("process_csv", str(catalogue), "--quality", "auto:max", stdout=io.StringIO())
    assert ProcessingRequest.objects.count() == 0


def test_reprocess_with_new_settings_redoes_every_image_with_them(api: APIClient, image_server: ImageServer) -> None:
    url = image_server.add("/r.jpg", make_image(500, 400))
    request_id = upload(api, [("1", "A", [url])]).json()["request_id"]
    [before] = images_of(request_id)
    assert (before.output_format, before.quality_chosen, before.score) == ("jpeg", 50, None)

    # A dry run checks and counts, and changes nothing.
    out = io.StringIO()
    call_command("reprocess", request_id, "--quality", "auto:eco", "--format", "avif", "--dry-run", stdout=out)
    assert "Would re-queue 1 images (now avif, quality auto:eco, copyright kept)" in out.getvalue()
    request = ProcessingRequest.objects.get(pk=request_id)
    assert (request.quality_option, request.output_format) == (50, "jpeg")
    assert images_of(request_id)[0].output_name == before.output_name

    out = io.StringIO()
    call_command("reprocess", request_id, "--quality", "auto:eco", "--format", "avif", stdout=out)
    assert "Re-queued 1 images" in out.getvalue()
    request.refresh_from_db()
    assert (request.status, request.quality, request.quality_mode, request.output_format) == (
        "completed",
        None,
        "auto:eco",
        "avif",
    )
    [after] = images_of(request_id)
    assert (after.status, after.output_format, after.candidate, after.encoder) == (
        "done",
        "avif",
        "reencoded",
        "libaom",
    )
    assert after.score is not None
    decoded, _ = stored(after)
    assert (decoded.format, decoded.size) == ("AVIF", (500, 400))
    status = api.get(f"/csv/status/{request_id}").json()
    assert status["options"]["quality"] == "auto:eco"
    assert status["products"][0]["images"][0]["format"] == "avif"


def test_reprocess_refuses_bad_or_mixed_new_settings(api: APIClient, image_server: ImageServer) -> None:
    url = image_server.add("/m.jpg", make_image(200, 150))
    request_id = upload(api, [("1", "A", [url])], quality="60").json()["request_id"]
    with pytest.raises(CommandError, match="--quality"):
        call_command("reprocess", request_id, "--quality", "100", stdout=io.StringIO())
    with pytest.raises(CommandError, match="--failed-only"):
        call_command("reprocess", request_id, "--failed-only", "--format", "webp", stdout=io.StringIO())
    request = ProcessingRequest.objects.get(pk=request_id)
    assert (request.quality_option, request.output_format) == (60, "jpeg")

    # A new format auto over a numeric quality takes auto:good, as an upload without one does.
    assert reprocess_options(request, output_format="auto").quality == "auto:good"
    assert reprocess_options(request, keep_copyright=False).quality == 60


def test_a_request_with_sizes_records_what_its_largest_size_was_made_of(
    api: APIClient, image_server: ImageServer
) -> None:
    url = image_server.add("/s.jpg", make_image(1200, 900))
    response = upload(api, [("1", "A", [url])], quality="auto:eco", output_format="webp", sizes="800,200")
    assert response.status_code == 202, response.content
    [image] = images_of(response.json()["request_id"])
    assert (image.status, image.output_format, image.candidate, image.encoder) == (
        "done",
        "webp",
        "reencoded",
        "libwebp",
    )
    assert image.quality_chosen is not None and image.score is not None
    decoded, _ = stored(image)
    assert (decoded.format, decoded.size) == ("WEBP", (800, 600))
