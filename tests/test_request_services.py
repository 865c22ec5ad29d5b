"""The rules of a request's use cases, in the services that own them (whoever calls them: the
API, the admin, the commands): RequestOptions, request_create's checks, and the dry runs of
request_retry_failed and request_reprocess."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.contrib.auth.models import User

from imageproc.engine import csv_io
from products.models import ImageStatus, Product, ProductImage
from requests_app.models import ProcessingRequest, RequestStatus
from requests_app.services.errors import InvalidOptions, RequestNotFinished
from requests_app.services.requests import (
    RequestOptions,
    request_create,
    request_reprocess,
    request_retry_failed,
)
from tests.conftest import csv_bytes

pytestmark = pytest.mark.django_db

# Exempt from the address guard (and from https) in the test settings; only checked, never called.
RECEIVER_URL = "http://127.0.0.2:9/hook"


def test_options_default_to_the_settings_quality_and_jpeg(settings: Any) -> None:
    settings.IMAGE_DEFAULT_QUALITY = 70
    assert RequestOptions() == RequestOptions(quality=70, output_format="jpeg", webhook_url="")


def test_options_name_every_field_they_refuse() -> None:
    with pytest.raises(InvalidOptions) as info:
        RequestOptions(quality=0, output_format="gif", webhook_url="https://10.0.0.1/hook")
    assert set(info.value.errors) == {"quality", "output_format", "webhook_url"}
    assert "from 1 to 95" in info.value.errors["quality"][0]
    assert "jpeg, webp" in info.value.errors["output_format"][0]
    assert "private" in info.value.errors["webhook_url"][0]
    assert info.value.status_code == 400


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"quality": 96}, "quality"),
        ({"quality": True}, "quality"),
        ({"quality": "50"}, "quality"),
        ({"webhook_url": "file:///etc/passwd"}, "webhook_url"),
        ({"webhook_url": "https://example.com/" + "a" * 2048}, "webhook_url"),
    ],
)
def test_options_refuse(options: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidOptions) as info:
        RequestOptions(**options)
    assert list(info.value.errors) == [field]


def test_options_keep_a_good_webhook_url_trimmed() -> None:
    options = RequestOptions(quality=1, output_format="webp", webhook_url=f"  {RECEIVER_URL}\n")
    assert (options.quality, options.output_format, options.webhook_url) == (1, "webp", RECEIVER_URL)


class NeverRead(io.BytesIO):
    """An upload whose size is known; reading it is a failure of the test."""

    size = 10**9

    def read(self, *args: Any) -> bytes:
        raise AssertionError("read")


def test_create_refuses_a_file_over_the_limit_by_its_size_before_reading_it(settings: Any) -> None:
    owner = User.objects.create_user("acme")
    with pytest.raises(csv_io.CsvTooLarge):
        request_create(owner=owner, csv_file=NeverRead())
    settings.CSV_MAX_BYTES = 1024
    with pytest.raises(csv_io.CsvTooLarge):
        request_create(owner=owner, csv_file=b"#" * 1025)
    assert ProcessingRequest.objects.count() == 0


def test_create_refuses_an_empty_file_as_an_invalid_csv() -> None:
    with pytest.raises(csv_io.CsvInvalid) as info:
        request_create(owner=User.objects.create_user("acme"), csv_file=b"")
    assert info.value.errors[0].message.startswith("The file is empty")
    assert ProcessingRequest.objects.count() == 0


def test_create_stores_the_options(settings: Any) -> None:
    settings.IMAGE_DEFAULT_QUALITY = 64
    content = csv_bytes([("1", "A", ["https://x.example/a.jpg"])])
    owner = User.objects.create_user("acme")
    default, _ = request_create(owner=owner, csv_file=content)
    chosen, _ = request_create(
        owner=owner,
        csv_file=content,
        options=RequestOptions(quality=20, output_format="webp", webhook_url=RECEIVER_URL),
    )
    default.refresh_from_db()
    chosen.refresh_from_db()
    assert (default.quality, default.output_format, default.webhook_url) == (64, "jpeg", "")
    assert (chosen.quality, chosen.output_format, chosen.webhook_url) == (20, "webp", RECEIVER_URL)


def finished_request(*, done: int, failed: int, status: str = RequestStatus.COMPLETED_WITH_ERRORS) -> ProcessingRequest:
    request = ProcessingRequest.objects.create(
        owner=User.objects.create_user("acme"),
        status=status,
        products_total=1,
        images_total=done + failed,
        images_done=done,
        images_failed=failed,
    )
    product = Product.objects.create(request=request, position=0, serial_number="1", product_name="A")
    for position in range(done + failed):
        ProductImage.objects.create(
            request=request,
            product=product,
            position=position,
            source_url=f"https://x.example/{position}.jpg",
            status=ImageStatus.DONE if position < done else ImageStatus.FAILED,
            output_name=f"out/{position}.jpg" if position < done else "",
        )
    return request


def test_dry_runs_count_what_the_real_runs_requeue_and_change_nothing(django_assert_max_num_queries: Any) -> None:
    request = finished_request(done=2, failed=3)
    with django_assert_max_num_queries(1):
        assert request_retry_failed(request=request, dry_run=True) == 3
    with django_assert_max_num_queries(0):
        assert request_reprocess(request=request, dry_run=True) == 5
    request.refresh_from_db()
    assert (request.status, request.images_done, request.images_failed) == (RequestStatus.COMPLETED_WITH_ERRORS, 2, 3)
    assert ProductImage.objects.filter(status=ImageStatus.FAILED).count() == 3
    assert set(ProductImage.objects.values_list("output_name", flat=True)) == {"out/0.jpg", "out/1.jpg", ""}


@pytest.mark.parametrize("dry_run", [False, True])
def test_retry_and_reprocess_refuse_a_running_request_dry_run_or_not(dry_run: bool) -> None:
    request = finished_request(done=1, failed=1, status=RequestStatus.PROCESSING)
    with pytest.raises(RequestNotFinished, match="retry it once it has finished"):
        request_retry_failed(request=request, dry_run=dry_run)
    with pytest.raises(RequestNotFinished, match="reprocess it once it has finished"):
        request_reprocess(request=request, dry_run=dry_run)
    assert ProductImage.objects.filter(status=ImageStatus.FAILED).count() == 1


def test_after_a_retry_the_rate_and_time_left_count_from_the_resumption() -> None:
    from datetime import timedelta

    from django.utils import timezone

    from requests_app.selectors import request_progress

    hour_ago = timezone.now() - timedelta(hours=1)
    request = finished_request(done=90, failed=10)
    # The first run: started an hour ago, 100 images in a minute, its last checkpoints kept.
    ProcessingRequest.objects.filter(pk=request.pk).update(
        started_at=hour_ago,
        completed_at=hour_ago + timedelta(minutes=1),
        rate_base_at=hour_ago + timedelta(seconds=50),
        rate_base_finished=90,
        rate_mark_at=hour_ago + timedelta(seconds=58),
        rate_mark_finished=100,
    )
    request.refresh_from_db()
    assert request_retry_failed(request=request) == 10
    request.refresh_from_db()
    assert request.status == RequestStatus.PROCESSING
    assert request.resumed_at is not None and request.resumed_finished == 90
    assert request_progress(request=request).eta_seconds is None  # nothing finished in this run yet

    # Five of the ten retried images finished in the five seconds since: 1 a second, 5 s left
    # (counted from the start an hour ago: 95 images an hour, three minutes left).
    ProcessingRequest.objects.filter(pk=request.pk).update(
        images_done=95, resumed_at=timezone.now() - timedelta(seconds=5)
    )
    request.refresh_from_db()
    progress = request_progress(request=request)
    assert progress.rate == pytest.approx(1.0, rel=0.3)
    assert progress.eta_seconds is not None and 3 <= progress.eta_seconds <= 8
