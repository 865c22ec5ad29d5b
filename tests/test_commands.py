"""Management commands through `call_command`: process_csv, reprocess, create_api_client and
revoke_api_key, and the services behind them.
Tasks run synchronously in-process (test settings), against a real image server."""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.utils import timezone
from rest_framework.test import APIClient

from products.models import Product, ProductImage
from requests_app.management.commands.process_csv import (
    EXIT_FAILED_IMAGES,
    EXIT_TIMEOUT,
    progress_line,
    watch,
    write_output,
)
from requests_app.models import ApiClient, ApiKey, ProcessingRequest, RequestStatus
from requests_app.selectors import Progress
from requests_app.services.clients import api_client_create, api_key_create
from requests_app.services.errors import ApiClientExists, InvalidOptions
from requests_app.services.onboarding import api_client_onboard
from tests.conftest import ImageServer, csv_bytes, make_image

pytestmark = pytest.mark.django_db(transaction=True)


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def run_failing(*args: str) -> tuple[CommandError, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError) as info:
        call_command(*args, stdout=out, stderr=err)
    return info.value, out.getvalue(), err.getvalue()


@pytest.fixture
def catalogue(tmp_path: Path, image_server: ImageServer) -> Path:
    shoe = image_server.add("/shoe.jpg", make_image(640, 480))
    hat = image_server.add("/hat.jpg", make_image(300, 200))
    path = tmp_path / "catalogue.csv"
    path.write_bytes(csv_bytes([("1", "Shoe", [shoe, hat]), ("2", "Hat", [hat])]))
    return path


@pytest.fixture
def with_failure(tmp_path: Path, image_server: ImageServer) -> Path:
    shoe = image_server.add("/shoe.jpg", make_image(640, 480))
    path = tmp_path / "broken.csv"
    path.write_bytes(csv_bytes([("1", "Shoe", [shoe]), ("2", "Gone", [image_server.base_url + "/gone.jpg"])]))
    return path


# --- process_csv -------------------------------------------------------------------------------


def test_process_csv_waits_writes_the_output_csv_and_sums_up(catalogue: Path, tmp_path: Path) -> None:
    output = tmp_path / "out.csv"
    out, _ = run("process_csv", str(catalogue), "--wait", "--output", str(output))
    obj = ProcessingRequest.objects.get()
    assert obj.status == RequestStatus.COMPLETED
    assert obj.owner.username == "cli"
    assert obj.original_filename == "catalogue.csv"
    assert f"Created request {obj.pk}: 2 products, 3 images" in out
    assert "3/3  3 done, 0 failed  completed" in out  # no terminal: plain progress lines
    assert f"Wrote {output} (2 products)." in out
    assert "products: 2   images: 3 (3 done, 0 failed)" in out
    assert "saved" in out and f"({100 * obj.bytes_saved / obj.bytes_in:.1f}%)" in out
    table = list(csv.reader(io.StringIO(output.read_text("utf-8"))))
    assert table[0] == ["S. No.", "Product Name", "Input Image Urls", "Output Image Urls"]
    assert [r[0] for r in table[1:]] == ["1", "2"]
    assert all(u.startswith("http://") for u in table[1][3].split(","))
    assert table[2][3] == table[1][3].split(",")[1]  # the same image: the same output


def test_process_csv_exits_2_and_lists_failures_with_reasons(with_failure: Path) -> None:
    error, out, _ = run_failing("process_csv", str(with_failure), "--wait")
    assert error.returncode == EXIT_FAILED_IMAGES
    assert str(error) == "1 of 2 images failed."
    assert "Failures (1): http_404: 1" in out
    assert "row 3 (S. No. 2): http_404:" in out
    assert "/gone.jpg" in out
    # --wait without --output writes next to the input.
    written = with_failure.with_name("broken-output.csv")
    table = list(csv.reader(io.StringIO(written.read_text("utf-8"))))
    assert table[2][3] == ""


def test_process_csv_without_wait_only_starts_the_request(catalogue: Path) -> None:
    out, _ = run("process_csv", str(catalogue))
    obj = ProcessingRequest.objects.get()
    assert f"Created request {obj.pk}" in out
    assert f"/admin/requests_app/processingrequest/{obj.pk}/change/" in out
    assert f"/csv/status/{obj.pk}" in out
    assert "Wrote" not in out
    assert not catalogue.with_name("catalogue-output.csv").exists()


def test_process_csv_options_are_the_api_options(catalogue: Path, tmp_path: Path) -> None:
    owner = User.objects.create_user("shop")
    run("process_csv", str(catalogue), "--owner", "shop", "--quality", "70", "--format", "webp", "--wait")
    obj = ProcessingRequest.objects.get()
    assert (obj.owner, obj.quality, obj.output_format) == (owner, 70, "webp")
    assert all(name.endswith(".webp") for name in ProductImage.objects.values_list("output_name", flat=True))


def test_process_csv_refuses_bad_input_and_stores_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"S. No.,Product Name,Input Image Urls\n1,Shoe,ftp://x/a.jpg\n1,Hat,https://x.example/b.jpg\n")
    error, _, err = run_failing("process_csv", str(bad))
    assert error.returncode == 1
    assert "The CSV has 2 problems" in str(error)
    assert "row 2, Input Image Urls: Invalid image URL" in err
    assert 'row 3, S. No.: S. No. "1" is already used in row 2.' in err
    assert ProcessingRequest.objects.count() == 0

    assert "No such file" in str(run_failing("process_csv", str(tmp_path / "missing.csv"))[0])
    assert "No user called 'nobody'" in str(run_failing("process_csv", str(bad), "--owner", "nobody")[0])
    assert "--quality" in str(run_failing("process_csv", str(bad), "--quality", "0")[0])
    assert "--webhook-url" in str(run_failing("process_csv", str(bad), "--webhook-url", "http://10.0.0.1/h")[0])
    assert ProcessingRequest.objects.count() == 0


def test_process_csv_says_when_too_many_requests_are_in_progress(catalogue: Path, settings: Any) -> None:
    settings.MAX_ACTIVE_REQUESTS_PER_CLIENT = 1
    client, _ = api_client_create(name="cli")
    ProcessingRequest.objects.create(owner=client.user, status=RequestStatus.PENDING)
    error = run_failing("process_csv", str(catalogue), "--wait")[0]
    assert error.returncode == 1
    assert "upload again once one of them has finished" in str(error)
    assert ProcessingRequest.objects.count() == 1


def test_watch_gives_up_at_the_timeout_with_exit_3(django_assert_num_queries: Any) -> None:
    obj = ProcessingRequest.objects.create(
        owner=User.objects.create_user("u"), status=RequestStatus.PROCESSING, images_total=4, images_done=1
    )
    from django.core.management.base import OutputWrapper

    out = io.StringIO()
    with django_assert_num_queries(1), pytest.raises(CommandError) as info:
        watch(obj, out=OutputWrapper(out), interval=0.01, timeout=0)
    assert info.value.returncode == EXIT_TIMEOUT
    assert "Still processing after 0 s" in str(info.value)
    assert "1/4  1 done, 0 failed  processing" in out.getvalue()


def test_progress_line_shows_rate_and_eta() -> None:
    progress = Progress(images_total=100, images_done=42, images_failed=3, percent=45.0, rate=9.0, eta_seconds=6)
    line = progress_line(progress, "processing")
    assert line.startswith("45/100  42 done, 3 failed  processing")
    assert line.endswith("9.0 img/s  ETA 0:06")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_watch_draws_a_tqdm_bar_with_the_requests_rate_and_eta_on_a_terminal(
    django_assert_num_queries: Any,
) -> None:
    from django.core.management.base import OutputWrapper

    obj = ProcessingRequest.objects.create(
        owner=User.objects.create_user("u"),
        status=RequestStatus.PROCESSING,
        images_total=100,
        images_done=42,
        images_failed=3,
        started_at=timezone.now() - timedelta(seconds=10),
    )
    out = Terminal()
    with django_assert_num_queries(1), pytest.raises(CommandError) as info:
        watch(obj, out=OutputWrapper(out), interval=0.01, timeout=0)
    assert info.value.returncode == EXIT_TIMEOUT
    drawn = out.getvalue()
    assert drawn.startswith("\r") and drawn.endswith("\n")  # redrawn in place, left on its own line
    last = drawn.rstrip("\n").rsplit("\r", 1)[-1]
    assert re.fullmatch(r" 45%\|#+ +\| 45/100, 42 done, 3 failed  processing  4\.5 img/s  ETA 0:12", last), last


def test_output_csv_of_2500_products_reads_in_chunks(tmp_path: Path, django_assert_max_num_queries: Any) -> None:
    obj = ProcessingRequest.objects.create(
        owner=User.objects.create_user("big"), status=RequestStatus.COMPLETED, products_total=2500, images_total=2500
    )
    products = Product.objects.bulk_create(
        Product(request=obj, position=i, serial_number=str(i), product_name=f"P{i}") for i in range(2500)
    )
    ProductImage.objects.bulk_create(
        ProductImage(request=obj, product=p, position=0, source_url=f"https://x.example/{p.position}.jpg")
        for p in products
    )
    with django_assert_max_num_queries(6):  # products and images, per 1000 products
        assert write_output(obj, tmp_path / "big.csv") == 2500


# --- reprocess ---------------------------------------------------------------------------------


@pytest.fixture
def failed_request(with_failure: Path) -> ProcessingRequest:
    with pytest.raises(CommandError):
        run("process_csv", str(with_failure), "--wait")
    obj = ProcessingRequest.objects.get()
    assert obj.status == RequestStatus.COMPLETED_WITH_ERRORS
    return obj


def test_reprocess_dry_run_changes_nothing(
    failed_request: ProcessingRequest, image_server: ImageServer, django_assert_max_num_queries: Any
) -> None:
    hits = sum(image_server.hits.values())
    with django_assert_max_num_queries(2):
        out, _ = run("reprocess", str(failed_request.pk), "--failed-only", "--dry-run")
    assert "Would re-queue 1 failed images" in out
    assert "Nothing changed (--dry-run)" in out
    out, _ = run("reprocess", str(failed_request.pk), "--dry-run")
    assert "Would re-queue 2 images" in out
    failed_request.refresh_from_db()
    assert (failed_request.status, failed_request.images_done, failed_request.images_failed) == (
        RequestStatus.COMPLETED_WITH_ERRORS,
        1,
        1,
    )
    assert sum(image_server.hits.values()) == hits


def test_reprocess_failed_only_retries_the_failed_images(
    failed_request: ProcessingRequest, image_server: ImageServer
) -> None:
    image_server.add("/gone.jpg", make_image(100, 100))
    shoe_hits = image_server.hits["/shoe.jpg"]
    out, _ = run("reprocess", str(failed_request.pk), "--failed-only", "--wait")
    assert "Re-queued 1 failed images" in out
    assert "(2 done, 0 failed)" in out
    failed_request.refresh_from_db()
    assert (failed_request.status, failed_request.images_done, failed_request.images_failed) == ("completed", 2, 0)
    assert image_server.hits["/shoe.jpg"] == shoe_hits  # the done one was left alone


def test_reprocess_from_scratch_fetches_every_image_again(
    failed_request: ProcessingRequest, image_server: ImageServer
) -> None:
    shoe_hits = image_server.hits["/shoe.jpg"]
    error, out, _ = run_failing("reprocess", str(failed_request.pk), "--wait")
    assert "Re-queued 2 images" in out
    assert error.returncode == EXIT_FAILED_IMAGES  # gone.jpg is still gone
    assert image_server.hits["/shoe.jpg"] == shoe_hits + 1


def test_reprocess_refuses_what_it_cannot_do(failed_request: ProcessingRequest) -> None:
    assert "is not a request id" in str(run_failing("reprocess", "nope")[0])
    assert "No request" in str(run_failing("reprocess", "00000000-0000-0000-0000-000000000000")[0])
    ProcessingRequest.objects.filter(pk=failed_request.pk).update(status=RequestStatus.PROCESSING)
    error = run_failing("reprocess", str(failed_request.pk))[0]
    assert "retry it once it has finished" in str(error) or "reprocess it once it has finished" in str(error)
    out, _ = run("reprocess", str(failed_request.pk), "--dry-run")
    assert "it would be refused until it has finished" in out


# --- create_api_client (api_client_onboard) ------------------------------------------------------


# The test settings exempt 127.0.0.2 from the webhook address guard (and from https); the URL
# is only checked, never called.
RECEIVER_URL = "http://127.0.0.2:9/hook"


def test_create_api_client_onboards_once_then_adds_keys() -> None:
    receiver_url = RECEIVER_URL
    out, _ = run("create_api_client", "acme", "--webhook-url", receiver_url)
    client = ApiClient.objects.get(user__username="acme")
    assert out.splitlines()[0] == "Created API client acme."
    assert f"default webhook URL: {receiver_url}" in out
    assert f"webhook secret: {client.webhook_secret}" in out
    first = out.strip().splitlines()[-1]
    assert ApiKey.objects.get(client=client).key_hash == ApiKey.hash(first)

    # Again without --webhook-url: the same client, a second key, the URL left as it was.
    out, _ = run("create_api_client", "acme")
    assert out.splitlines()[0] == "Found API client acme."
    second = out.strip().splitlines()[-1]
    assert second != first
    assert set(ApiKey.objects.filter(client=client).values_list("key_hash", flat=True)) == {
        ApiKey.hash(first),
        ApiKey.hash(second),
    }
    client.refresh_from_db()
    assert client.default_webhook_url == receiver_url
    run("create_api_client", "acme", "--webhook-url", "")  # an empty string clears it
    client.refresh_from_db()
    assert client.default_webhook_url == ""


def test_create_api_client_prints_the_signing_secret_on_creation_or_when_asked_only() -> None:
    out, _ = run("create_api_client", "acme")
    secret = ApiClient.objects.get(user__username="acme").webhook_secret
    assert f"webhook secret: {secret}" in out
    # One more key for an existing client: the secret is not printed again with it...
    out, _ = run("create_api_client", "acme")
    assert secret not in out and "webhook secret" not in out
    assert out.strip().splitlines()[-1].startswith("ipk_")
    # ...unless asked for (the service keeps it to sign with: docs/webhooks.md).
    out, _ = run("create_api_client", "acme", "--show-webhook-secret")
    assert f"webhook secret: {secret}" in out
    assert out.strip().splitlines()[-1].startswith("ipk_")


def test_onboarding_refuses_a_bad_webhook_url_or_a_taken_name_and_creates_nothing() -> None:
    error = run_failing("create_api_client", "evil", "--webhook-url", "http://10.0.0.1/hook")[0]
    assert str(error).startswith("--webhook-url: ")
    assert not User.objects.filter(username="evil").exists()

    existing = api_client_onboard(name="acme").client
    with pytest.raises(ApiClientExists, match="exists already"):
        api_client_onboard(name="acme", default_webhook_url="", must_be_new=True)
    assert ApiKey.objects.filter(client=existing).count() == 1
    with pytest.raises(InvalidOptions) as info:
        api_client_onboard(name="  ")
    assert info.value.errors == {"name": ["A client needs a name."]}
    assert ApiClient.objects.count() == 1


# --- revoke_api_key ----------------------------------------------------------------------------


def test_revoke_api_key_by_prefix_or_whole_key() -> None:
    client, _ = api_client_create(name="acme")
    first = api_key_create(client=client)
    second = api_key_create(client=client)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {first}")
    assert api.get("/csv/requests").status_code == 200

    out, _ = run("revoke_api_key", first.split("_")[1])
    assert "Revoked key" in out
    assert api.get("/csv/requests").status_code == 401
    run("revoke_api_key", second)  # the whole key works too
    assert not ApiKey.objects.active().exists()
    assert "No API key with prefix" in str(run_failing("revoke_api_key", "ffffffff")[0])
