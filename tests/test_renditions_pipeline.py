"""Renditions through the service (issue 15): the `sizes` option, one stored output per size,
the status answer, the output CSV's columns, and per-output crash safety, retry and reprocess."""

from __future__ import annotations

import csv
import io
import time
from datetime import timedelta
from typing import Any

import pytest
from django.core.files.storage import default_storage
from django.utils import timezone
from PIL import Image
from rest_framework.test import APIClient

from imageproc.pipeline import process
from imageproc.pipeline.process import image_process
from imageproc.pipeline.sweep import sweep
from products.models import ImageOutput, ImageStatus, ProductImage
from requests_app.models import ProcessingRequest, RequestStatus
from requests_app.services.errors import InvalidOptions
from requests_app.services.requests import RequestOptions, request_create, request_reprocess
from tests.conftest import ImageServer, csv_bytes, make_image
from tests.test_pipeline import image_ids, owner, queued  # noqa: F401  # fixtures

pytestmark = pytest.mark.django_db(transaction=True)


def upload(client: APIClient, content: bytes, **data: Any) -> Any:
    fields = {"file": io.BytesIO(content), **data}
    fields["file"].name = "catalogue.csv"
    return client.post("/csv/upload", fields, format="multipart")


def output_text(api: APIClient, request_id: Any) -> str:
    response = api.get(f"/csv/output/{request_id}?dialect=standard")
    assert response.status_code == 200
    return b"".join(response.streaming_content).decode()


def stored_size(name: str) -> tuple[int, int]:
    with default_storage.open(name) as handle, Image.open(handle) as im:
        im.load()
        return im.size


def test_sizes_are_parsed_from_text_or_lists_and_refused_by_name() -> None:
    assert RequestOptions(sizes="200, 1600,800").sizes == (1600, 800, 200)
    assert RequestOptions(sizes=[800, 800]).sizes == (800,)
    assert RequestOptions().sizes == ()
    for bad in ("15", "8193", "1,2,3", "100,200,300,400,500,600,700", "big", [True], 800):
        with pytest.raises(InvalidOptions) as caught:
            RequestOptions(sizes=bad)  # type: ignore[arg-type]
        assert list(caught.value.errors) == ["sizes"], bad


def test_an_upload_with_sizes_answers_every_output_and_the_csv_adds_a_column_per_further_size(
    api: APIClient, image_server: ImageServer
) -> None:
    big = image_server.add("/big.jpg", make_image(1200, 900))
    small = image_server.add("/small.png", make_image(300, 200, "PNG"), content_type="image/png")
    response = upload(api, csv_bytes([("1", "Shoe", [big, small]), ("2", "Hat", [big])]), sizes="200,800,1600")
    assert response.status_code == 202, response.content
    request = ProcessingRequest.objects.get(pk=response.json()["request_id"])
    assert request.sizes == [1600, 800, 200]

    status = api.get(f"/csv/status/{request.pk}").json()
    assert status["status"] == "completed"
    assert status["options"]["sizes"] == [1600, 800, 200]
    shoe, hat = status["products"]
    expected = {
        # 1600 is above the source: its own size. 800 and 200 fit inside.
        big: [(1600, 1200, 900), (800, 800, 600), (200, 200, 150)],
        # A 300 px source: one output at its own size for 1600 and 800, and the 200 px one.
        small: [(1600, 300, 200), (800, 300, 200), (200, 200, 133)],
    }
    for url, outputs in zip(shoe["input_image_urls"], shoe["outputs"], strict=True):
        assert [(o["size"], o["width"], o["height"]) for o in outputs] == expected[url]
        for o in outputs:
            name = default_storage_name(o["url"])
            assert stored_size(name) == (o["width"], o["height"])
            assert f"-{o['width']}x{o['height']}-" in name  # the key names the size
            assert default_storage.size(name) == o["bytes"]
    # The first size is the main output.
    assert shoe["output_image_urls"] == [outputs[0]["url"] for outputs in shoe["outputs"]]
    small_outputs = shoe["outputs"][1]
    assert small_outputs[0]["url"] == small_outputs[1]["url"]  # stored once
    assert hat["outputs"][0] == shoe["outputs"][0]  # a copy of a URL shares its outputs

    rows = list(csv.reader(io.StringIO(output_text(api, request.pk))))
    assert rows[0][-3:] == ["Output Image Urls", "Output Image Urls (800px)", "Output Image Urls (200px)"]
    by_size = {o["size"]: [] for o in shoe["outputs"][0]}
    for outputs in shoe["outputs"]:
        for o in outputs:
            by_size[o["size"]].append(o["url"])
    assert rows[1][-3:] == [",".join(by_size[1600]), ",".join(by_size[800]), ",".join(by_size[200])]
    # Three distinct outputs of the big image, two of the small one; nothing else stored.
    assert ImageOutput.objects.filter(request=request).values("name").distinct().count() == 5
    assert ImageOutput.objects.filter(request=request).count() == 9  # 3 images x 3 sizes
    image = ProductImage.objects.get(request=request, source_url=small, product__serial_number="1")
    assert (image.width, image.height) == (300, 200)


def default_storage_name(url: str) -> str:
    # Local storage in the tests: MEDIA_URL + name.
    from django.conf import settings

    return url.split(settings.MEDIA_URL, 1)[1]


def test_a_request_without_sizes_answers_as_it_always_did(api: APIClient, image_server: ImageServer) -> None:
    url = image_server.add("/plain.jpg", make_image(640, 480))
    request_id = upload(api, csv_bytes([("1", "A", [url])])).json()["request_id"]
    product = api.get(f"/csv/status/{request_id}").json()["products"][0]
    assert "outputs" not in product
    header = output_text(api, request_id).splitlines()[0]
    assert header == "S. No.,Product Name,Input Image Urls,Output Image Urls"
    assert ImageOutput.objects.count() == 0


def test_bad_sizes_are_a_400_naming_the_field(api: APIClient, image_server: ImageServer) -> None:
    url = image_server.add("/x.jpg", make_image(64, 64))
    response = upload(api, csv_bytes([("1", "A", [url])]), sizes="10,800")
    assert response.status_code == 400
    assert "sizes" in response.content.decode()
    assert ProcessingRequest.objects.count() == 0


class Crash(BaseException):
    """Stands for the worker dying: not an Exception, so nothing in the pipeline catches it."""


def test_a_crash_between_two_sizes_redoes_only_the_missing_one(
    owner: Any,  # noqa: F811
    queued: list[Any],  # noqa: F811
    image_server: ImageServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = image_server.add("/c.jpg", make_image(1000, 750))
    request, _ = request_create(
        owner=owner, csv_file=csv_bytes([("1", "A", [url, url])]), options=RequestOptions(sizes=[600, 300, 100])
    )
    ids = image_ids(request)
    store = process._timed_store_rendition

    def dies_at_100(request_id: Any, key: str, result: Any, sizes: tuple[int, ...]) -> Any:
        if sizes == (100,):
            time.sleep(0.3)  # the others land and are recorded first
            raise Crash
        return store(request_id, key, result, sizes)

    monkeypatch.setattr(process, "RECORD_EVERY", 0.0)
    monkeypatch.setattr(process, "_timed_store_rendition", dies_at_100)
    with pytest.raises(Crash):
        image_process(request_id=request.pk, image_ids=ids)
    assert sorted(ImageOutput.objects.values_list("size", flat=True)) == [300, 300, 600, 600]
    assert set(ProductImage.objects.values_list("status", flat=True)) == {ImageStatus.PROCESSING}

    # The worker is dead: its lease runs out, the sweeper gives the images back.
    ProductImage.objects.update(lease_until=timezone.now() - timedelta(minutes=5))
    sweep()
    assert set(ProductImage.objects.values_list("status", flat=True)) == {ImageStatus.PENDING}

    rendered: list[list[int]] = []
    real_render = process.render

    def counting(data: bytes, sizes: list[int], options: Any) -> Any:
        rendered.append(list(sizes))
        return real_render(data, sizes, options)

    monkeypatch.setattr(process, "_timed_store_rendition", store)
    monkeypatch.setattr(process, "render", counting)
    image_process(request_id=request.pk, image_ids=ids)
    assert rendered == [[100]]
    request.refresh_from_db()
    assert request.status == RequestStatus.COMPLETED
    rows = list(ImageOutput.objects.order_by("image_id", "-size").values_list("image_id", "size", "name"))
    assert len(rows) == 6 and len({(i, s) for i, s, _ in rows}) == 6
    assert {stored_size(name) for _, _, name in rows} == {(600, 450), (300, 225), (100, 75)}
    for image in ProductImage.objects.all():
        assert image.status == ImageStatus.DONE
        assert (image.width, image.height) == (600, 450)
        assert image.output_name == ImageOutput.objects.get(image=image, size=600).name


def test_reprocess_makes_every_size_again(
    owner: Any,  # noqa: F811
    queued: list[Any],  # noqa: F811
    image_server: ImageServer,
) -> None:
    url = image_server.add("/r.jpg", make_image(500, 500))
    request, _ = request_create(
        owner=owner, csv_file=csv_bytes([("1", "A", [url])]), options=RequestOptions(sizes=[400, 50])
    )
    image_process(request_id=request.pk, image_ids=image_ids(request))
    request.refresh_from_db()
    assert request.status == RequestStatus.COMPLETED
    assert ImageOutput.objects.count() == 2
    request_reprocess(request=request)
    assert ImageOutput.objects.count() == 0
    image_process(request_id=request.pk, image_ids=image_ids(request))
    assert sorted(ImageOutput.objects.values_list("size", "width")) == [(50, 50), (400, 400)]


def test_process_csv_takes_sizes_and_writes_their_columns(image_server: ImageServer, tmp_path: Any) -> None:
    from django.core.management import CommandError, call_command

    url = image_server.add("/p.jpg", make_image(640, 480))
    source = tmp_path / "catalogue.csv"
    source.write_bytes(csv_bytes([("1", "Shoe", [url])]))
    output = tmp_path / "out.csv"
    call_command("process_csv", str(source), "--sizes", "100,400", "--output", str(output), stdout=io.StringIO())
    request = ProcessingRequest.objects.get()
    assert request.sizes == [400, 100]
    header, row = list(csv.reader(io.StringIO(output.read_text("utf-8"))))
    assert header[-2:] == ["Output Image Urls", "Output Image Urls (100px)"]
    sizes = [stored_size(default_storage_name(cell)) for cell in row[-2:]]
    assert sizes == [(400, 300), (100, 75)]
    with pytest.raises(CommandError, match="--sizes"):
        call_command("process_csv", str(source), "--sizes", "9000", stdout=io.StringIO())
    assert ProcessingRequest.objects.count() == 1


def test_the_admin_uploads_with_sizes_and_shows_a_thumbnail_per_size(image_server: ImageServer) -> None:
    import re

    from django.contrib.auth.models import User
    from django.test import Client

    staff = User.objects.create_superuser("staff", "staff@example.com", "pw")
    browser = Client()
    browser.force_login(staff)
    admin = "/admin/requests_app/processingrequest/"
    url = image_server.add("/adm.jpg", make_image(900, 600))
    file = io.BytesIO(csv_bytes([("1", "Lamp", [url])]))
    file.name = "lamps.csv"
    form = {"file": file, "quality": "60", "output_format": "jpeg", "webhook_url": "", "sizes": "300,600"}
    response = browser.post(f"{admin}upload/", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    request = ProcessingRequest.objects.get()
    assert request.sizes == [600, 300]
    html = browser.get(f"{admin}{request.pk}/change/").content.decode()
    assert "sizes 600, 300 px" in html
    names = ImageOutput.objects.order_by("-size").values_list("name", flat=True)
    for size, name in zip((600, 300), names, strict=True):
        assert re.search(rf'<img src="[^"]*{re.escape(name)}" alt="{size}px"', html), size

    file = io.BytesIO(csv_bytes([("1", "Lamp", [url])]))
    file.name = "lamps.csv"
    response = browser.post(f"{admin}upload/", {**form, "file": file, "sizes": "5"})
    field = re.search(r'<div class="form-row errors field-sizes">(.*?)</div>', response.content.decode(), re.S)
    assert field and "Each size is from 16 to 8192 pixels" in field.group(1)
    assert ProcessingRequest.objects.count() == 1


def test_the_webhook_payload_sums_up_each_size(
    owner: Any,  # noqa: F811
    queued: list[Any],  # noqa: F811
    image_server: ImageServer,
) -> None:
    import json

    from requests_app.services.webhooks import event_payload

    a = image_server.add("/w1.jpg", make_image(800, 600))
    b = image_server.add("/w2.jpg", make_image(100, 100))
    request, _ = request_create(
        owner=owner, csv_file=csv_bytes([("1", "A", [a, b])]), options=RequestOptions(sizes="400,50")
    )
    image_process(request_id=request.pk, image_ids=image_ids(request))
    request.refresh_from_db()
    data = json.loads(event_payload(request=request))["data"]
    assert data["sizes"] == [400, 50]
    by_size = {o["size"]: o for o in data["outputs"]}
    assert by_size[400]["images"] == by_size[50]["images"] == 2
    for size in (400, 50):
        assert by_size[size]["bytes"] == sum(ImageOutput.objects.filter(size=size).values_list("bytes", flat=True))
    plain, _ = request_create(owner=owner, csv_file=csv_bytes([("1", "A", [a])]))
    image_process(request_id=plain.pk, image_ids=image_ids(plain))
    plain.refresh_from_db()
    assert "sizes" not in json.loads(event_payload(request=plain))["data"]


def test_reprocess_can_change_the_sizes_and_refuses_bad_ones(image_server: ImageServer, tmp_path: Any) -> None:
    from django.core.management import CommandError, call_command

    url = image_server.add("/rp.jpg", make_image(640, 480))
    source = tmp_path / "catalogue.csv"
    source.write_bytes(csv_bytes([("1", "Shoe", [url])]))
    call_command("process_csv", str(source), "--sizes", "400", "--wait", stdout=io.StringIO())
    request = ProcessingRequest.objects.get()
    assert list(ImageOutput.objects.values_list("size", "width")) == [(400, 400)]
    for bad in (["--sizes", "1"], ["--sizes", "300", "--failed-only"]):
        with pytest.raises(CommandError, match="--sizes"):
            call_command("reprocess", str(request.pk), *bad, stdout=io.StringIO())
    request.refresh_from_db()
    assert request.sizes == [400]
    call_command("reprocess", str(request.pk), "--sizes", "320,80", "--wait", stdout=io.StringIO())
    request.refresh_from_db()
    assert request.sizes == [320, 80]
    assert sorted(ImageOutput.objects.values_list("size", "width", "height")) == [(80, 80, 60), (320, 320, 240)]
    call_command("reprocess", str(request.pk), "--sizes", "", "--wait", stdout=io.StringIO())
    request.refresh_from_db()
    assert request.sizes == [] and ImageOutput.objects.count() == 0
    assert stored_size(ProductImage.objects.get().output_name) == (640, 480)
