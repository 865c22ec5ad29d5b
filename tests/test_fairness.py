"""Fair share between clients, in-process: the rule on figures (decide), the rule on the
database (choose), what a batch task and a stream do with it, the ETA, and the weight in the
admin and the command line. The end-to-end goals, with real qclusters, are in
tests/test_sharing.py."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from imageproc.pipeline import fairness
from imageproc.pipeline.fairness import Candidate, choose, decide, fresh_batch, yield_to_fairer
from imageproc.pipeline.work import images_work
from products.models import ImageStatus, ProductImage
from requests_app.models import ApiClient, ProcessingRequest, RequestStatus
from requests_app.selectors import request_progress
from requests_app.services.clients import api_client_create
from requests_app.services.requests import request_create
from tests.conftest import ImageServer, csv_bytes, make_image

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def candidate(owner: str, workers: int, weight: float = 1.0, age: int = 0) -> Candidate:
    return Candidate(
        owner_id=owner,
        request_id=f"request-of-{owner}",
        request_created_at=T0 + timedelta(seconds=age),
        workers=workers,
        weight=weight,
    )


def chosen(candidates: list[Candidate], **kwargs: Any) -> str:
    pick = decide(candidates, **kwargs)
    assert pick is not None
    return str(pick.owner_id)


# --- The rule, on figures ---------------------------------------------------------------------


def test_a_newcomer_gets_the_next_worker_of_a_client_that_has_two() -> None:
    # Asked by one of the big client's two workers: the other one stays with it.
    assert chosen([candidate("big", 1), candidate("new", 0)], own_owner="big", recent={"big": 900}) == "new"
    assert chosen([candidate("big", 0), candidate("new", 1)], own_owner="big", recent={"big": 900, "new": 5}) == "big"


def test_two_clients_on_two_workers_keep_one_each_whatever_they_were_served() -> None:
    for recent in ({"a": 500, "b": 500}, {"a": 900, "b": 100}):
        assert chosen([candidate("a", 0), candidate("b", 1)], own_owner="a", recent=recent, tied_for=1) == "a"
        assert chosen([candidate("a", 1), candidate("b", 0)], own_owner="b", recent=recent, tied_for=1) == "b"


def test_a_fresh_task_goes_to_the_client_furthest_below_its_share() -> None:
    assert chosen([candidate("a", 2), candidate("b", 1), candidate("c", 1, age=-5)]) == "c"
    # Weights: 3 workers busy, a weighs 3 (target 3), b 1 (target 1): b has its one.
    assert chosen([candidate("a", 2, weight=3), candidate("b", 1, weight=1)], busy=4) == "a"


def test_a_light_client_beside_a_heavy_one_on_two_workers_is_never_starved() -> None:
    heavy, light = candidate("heavy", 1, weight=3), candidate("light", 0, weight=1)
    # Target 1.5 and 0.5 workers: a tie, decided by what each was served per weight.
    assert chosen([heavy, light], own_owner="heavy", tied_for=1, recent={"heavy": 300, "light": 10}) == "heavy"
    assert chosen([heavy, light], own_owner="heavy", tied_for=5, recent={"heavy": 300, "light": 10}) == "light"
    assert chosen([heavy, light], own_owner="heavy", tied_for=5, recent={"heavy": 300, "light": 95}) == "heavy"
    on_light = [candidate("heavy", 1, weight=3), candidate("light", 0, weight=1)]
    # Served alike per weight: it stays; served twice as much: it goes to the heavy one.
    assert chosen(on_light, own_owner="light", tied_for=5, recent={"heavy": 300, "light": 100}) == "light"
    assert chosen(on_light, own_owner="light", tied_for=5, recent={"heavy": 300, "light": 200}) == "heavy"


def test_more_clients_than_workers_take_turns_and_a_newcomer_does_not_wait() -> None:
    a, b, c = candidate("a", 0), candidate("b", 1), candidate("c", 0)
    # a and c tie (b has the other worker): a keeps its slice against a client served lately...
    assert chosen([a, b, c], own_owner="a", tied_for=1, recent={"a": 80, "b": 80, "c": 40}) == "a"
    # ...then leaves for it; a client served nothing lately (new) does not wait for the slice.
    assert chosen([a, b, c], own_owner="a", tied_for=4, recent={"a": 80, "b": 80, "c": 40}) == "c"
    assert chosen([a, b, c], own_owner="a", tied_for=1, recent={"a": 80, "b": 80}) == "c"


def test_a_worker_is_lent_to_a_mature_client_whose_workers_were_slower() -> None:
    both = frozenset({"a", "b"})
    slow_b = {"a": 1000, "b": 600}
    mine, theirs = candidate("a", 0), candidate("b", 1)
    assert chosen([mine, theirs], own_owner="a", tied_for=5, recent=slow_b, mature=both) == "b"
    # Not within its slice, not for a newcomer's figures, not for a small difference.
    assert chosen([mine, theirs], own_owner="a", tied_for=1, recent=slow_b, mature=both) == "a"
    assert chosen([mine, theirs], own_owner="a", tied_for=5, recent=slow_b, mature=frozenset({"a"})) == "a"
    assert chosen([mine, theirs], own_owner="a", tied_for=5, recent={"a": 1000, "b": 900}, mature=both) == "a"
    # Lent (b now has both workers): it stays while b is still behind, then goes home.
    lent = [candidate("a", 0), candidate("b", 1)]
    assert chosen(lent, own_owner="b", tied_for=1, recent={"a": 1000, "b": 800}, mature=both) == "b"
    assert chosen(lent, own_owner="b", tied_for=9, recent={"a": 1000, "b": 1010}, mature=both) == "a"
    # Only one worker is ever lent: a client two workers from its share gets nothing more.
    four = [candidate("a", 1), candidate("b", 3)]
    assert chosen(four, own_owner="a", tied_for=9, recent={"a": 1000, "b": 100}, mature=both) == "a"


# --- The rule, on the database ------------------------------------------------------------------


@pytest.fixture(autouse=True)
def fresh_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test reads the figures anew (the module keeps them a moment per process)."""
    monkeypatch.setattr(fairness, "_checks", {})
    monkeypatch.setattr(fairness, "_weights", {})
    monkeypatch.setattr(fairness, "_weights_read", 0.0)
    monkeypatch.setattr(fairness, "_recent_read", (-1e9, {}))
    monkeypatch.setattr(fairness, "_marks_looked", -1e9)


def shop(name: str, weight: float | None = None) -> Any:
    client, _ = api_client_create(name=name)
    if weight is not None:
        ApiClient.objects.filter(pk=client.pk).update(weight=weight)
    return client.user


def upload(owner: Any, urls: list[str]) -> ProcessingRequest:
    # The `db` fixture never commits: the dispatch queued on commit does not run.
    request, _ = request_create(owner=owner, csv_file=csv_bytes([(str(n), f"P{n}", [u]) for n, u in enumerate(urls)]))
    return request


def at_work(request: ProcessingRequest, count: int, token: str | None = None) -> str:
    """Another worker holds `count` images of the request (under its claim token)."""
    token = token or uuid.uuid4().hex
    ids = list(fairness.fresh_images(request.pk).values_list("id", flat=True)[:count])
    ProductImage.objects.filter(pk__in=ids).update(
        status=ImageStatus.PROCESSING, claim_token=token, claimed_at=timezone.now(), attempts=1
    )
    ProcessingRequest.objects.filter(pk=request.pk).update(status=RequestStatus.PROCESSING)
    return token


def links(tag: str, count: int) -> list[str]:
    return [f"http://img.example/{tag}/{n}.jpg" for n in range(count)]


@pytest.mark.django_db
def test_choose_sends_a_busy_clients_worker_to_a_new_client() -> None:
    big, small = shop("big"), shop("small")
    catalogue = upload(big, links("big", 50))
    mine, other = at_work(catalogue, 8), at_work(catalogue, 8)
    assert choose(current=catalogue.pk, token=mine) == catalogue.pk  # alone: stays
    newcomer = upload(small, links("small", 5))
    assert choose(current=catalogue.pk, token=mine) == newcomer.pk
    # Once it has a worker, the others stay with the catalogue.
    at_work(newcomer, 5, token=mine)
    assert choose(current=catalogue.pk, token=other) == catalogue.pk
    # Nothing fresh left anywhere but in the catalogue: there it goes.
    assert choose() == catalogue.pk


@pytest.mark.django_db
def test_within_a_client_a_second_worker_takes_its_next_request() -> None:
    owner = shop("acme")
    first = upload(owner, links("first", 40))
    mine, _ = at_work(first, 8), at_work(first, 8)
    second = upload(owner, links("second", 40))
    assert choose(current=first.pk, token=mine) == second.pk
    at_work(second, 8)
    # The client's workers go to its request with the fewest of them.
    third = upload(owner, links("third", 40))
    assert choose() == third.pk
    at_work(third, 8)
    assert choose() == second.pk  # one worker each on second and third, two on first; second is older


@pytest.mark.django_db
def test_a_request_without_fresh_images_is_not_chosen(settings: Any) -> None:
    owner, other = shop("acme"), shop("other")
    done = upload(owner, links("done", 3))
    ProductImage.objects.filter(request=done).update(status=ImageStatus.DONE)
    retried = upload(other, links("retried", 2))
    # A retry and an image set aside keep their own tasks: not fresh.
    ProductImage.objects.filter(request=retried).update(attempts=1)
    assert choose() is None
    ProductImage.objects.filter(request=retried).update(attempts=0, retry_at=timezone.now())
    assert choose() is None
    assert fresh_batch(retried.pk) == []


@pytest.mark.django_db
def test_a_batch_takes_every_copy_of_its_urls() -> None:
    owner = shop("acme")
    urls = links("dup", 3)
    request = upload(owner, [urls[0], urls[1], urls[0], urls[2], urls[0]])
    ids = fresh_batch(request.pk, urls=1)
    picked = set(ProductImage.objects.filter(pk__in=ids).values_list("source_url", flat=True))
    assert len(picked) == 1
    assert len(ids) == ProductImage.objects.filter(request=request, source_url__in=picked).count()


@pytest.mark.django_db
def test_a_stream_yields_to_a_newcomer_and_not_when_fair_share_is_off(settings: Any) -> None:
    big, small = shop("big"), shop("small")
    catalogue = upload(big, links("big", 50))
    mine, _ = at_work(catalogue, 8), at_work(catalogue, 8)
    assert not yield_to_fairer(request_id=str(catalogue.pk), token=mine, since=0.0)
    upload(small, links("small", 5))
    fairness._checks.clear()
    assert yield_to_fairer(request_id=str(catalogue.pk), token=mine, since=0.0)
    settings.IMAGE_FAIR_SHARE = False
    fairness._checks.clear()
    assert not yield_to_fairer(request_id=str(catalogue.pk), token=mine, since=0.0)


@pytest.fixture
def photos(image_server: ImageServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    # These tests commit: the dispatch an upload queues on commit would process it at once
    # (the test cluster is synchronous). Each test runs its tasks itself.
    from requests_app.services import requests as request_services

    monkeypatch.setattr(request_services, "async_task", lambda *args, **kwargs: None)
    photo = make_image(64, 48)

    def add(tag: str, count: int) -> list[str]:
        return [image_server.add(f"/{tag}/{n}.jpg", photo) for n in range(count)]

    return add


@pytest.mark.django_db(transaction=True)
def test_a_batch_task_of_a_busy_client_serves_the_newcomer_first(settings: Any, photos: Any) -> None:
    settings.IMAGE_STEAL_SECONDS = 0  # one batch per task: what it served first shows
    big, small = shop("big"), shop("small")
    catalogue = upload(big, photos("big", 20))
    at_work(catalogue, 4)  # another worker is on the catalogue
    newcomer = upload(small, photos("small", 3))
    batch = [str(i) for i in fairness.fresh_images(catalogue.pk).values_list("id", flat=True)[:5]]

    images_work(request_id=str(catalogue.pk), image_ids=batch)

    assert ProcessingRequest.objects.get(pk=newcomer.pk).status == RequestStatus.COMPLETED
    # The catalogue's batch is still pending, queued: a stream of it, or a later task, takes it.
    assert set(ProductImage.objects.filter(pk__in=batch).values_list("status", flat=True)) == {ImageStatus.PENDING}


@pytest.mark.django_db(transaction=True)
def test_a_batch_task_goes_on_with_the_fairest_work_until_none_is_left(photos: Any) -> None:
    first, second = upload(shop("a"), photos("a", 6)), upload(shop("b"), photos("b", 6))
    batch = [str(i) for i in fairness.fresh_images(first.pk).values_list("id", flat=True)[:2]]

    images_work(request_id=str(first.pk), image_ids=batch)

    for request in (first, second):
        assert ProcessingRequest.objects.get(pk=request.pk).status == RequestStatus.COMPLETED


@pytest.mark.django_db(transaction=True)
def test_a_batch_holding_a_retry_runs_alone_as_it_is(settings: Any, photos: Any) -> None:
    big, small = shop("big"), shop("small")
    catalogue = upload(big, photos("big", 6))
    at_work(catalogue, 2)
    upload(small, photos("small", 3))
    retry = fairness.fresh_images(catalogue.pk).first()
    assert retry is not None
    ProductImage.objects.filter(pk=retry.pk).update(attempts=1)

    images_work(request_id=str(catalogue.pk), image_ids=[str(retry.pk)])

    assert ProductImage.objects.get(pk=retry.pk).status == ImageStatus.DONE
    assert ProductImage.objects.filter(status=ImageStatus.DONE).count() == 1


# --- The ETA --------------------------------------------------------------------------------


def processing(
    owner: Any, total: int, finished: int, started_ago: float | None = None, **fields: Any
) -> ProcessingRequest:
    request = upload(owner, links(uuid.uuid4().hex[:6], total))
    if started_ago is not None:
        fields["started_at"] = timezone.now() - timedelta(seconds=started_ago)
    ProcessingRequest.objects.filter(pk=request.pk).update(
        status=RequestStatus.PROCESSING, images_done=finished, **fields
    )
    request.refresh_from_db()
    return request


@pytest.mark.django_db
def test_eta_is_the_time_left_at_the_rate_since_the_base_checkpoint() -> None:
    now = timezone.now()
    owner = shop("acme")
    # 300 of 1,000 finished, 100 of them in the last 10 s: 10/s, 70 s left.
    request = processing(
        owner,
        1000,
        300,
        started_ago=120,
        rate_base_at=now - timedelta(seconds=10),
        rate_base_finished=200,
        rate_mark_at=now - timedelta(seconds=4),
        rate_mark_finished=260,
    )
    progress = request_progress(request=request)
    assert progress.rate == pytest.approx(10, rel=0.1)
    assert progress.eta_seconds == pytest.approx(70, abs=7)


@pytest.mark.django_db
def test_eta_is_null_until_it_can_be_estimated_and_once_finished() -> None:
    owner = shop("acme")
    early = processing(owner, 200, 6, started_ago=3)
    assert request_progress(request=early).eta_seconds is None  # 3% done
    started = processing(owner, 200, 20, started_ago=10)
    assert request_progress(request=started).eta_seconds == pytest.approx(90, abs=5)  # 2/s since the start
    # A checkpoint past the count (reprocessed since): the rate since the start instead.
    reprocessed = processing(
        owner, 200, 20, started_ago=10, rate_base_at=timezone.now() - timedelta(seconds=15), rate_base_finished=150
    )
    assert request_progress(request=reprocessed).eta_seconds == pytest.approx(90, abs=5)
    ProcessingRequest.objects.filter(pk=started.pk).update(status=RequestStatus.COMPLETED, completed_at=timezone.now())
    started.refresh_from_db()
    assert request_progress(request=started).eta_seconds is None


@pytest.mark.django_db
def test_workers_move_the_checkpoints_of_processing_requests_every_ten_seconds() -> None:
    owner = shop("acme")
    request = processing(owner, 100, 40)
    fairness.mark_rates()
    request.refresh_from_db()
    assert (request.rate_mark_finished, request.rate_base_at) == (40, None)
    first_mark = request.rate_mark_at
    assert first_mark is not None
    ProcessingRequest.objects.filter(pk=request.pk).update(images_done=55)
    fairness._marks_looked = -1e9
    fairness.mark_rates()  # too soon: nothing moves
    request.refresh_from_db()
    assert request.rate_mark_at == first_mark
    ProcessingRequest.objects.filter(pk=request.pk).update(rate_mark_at=first_mark - timedelta(seconds=11))
    fairness._marks_looked = -1e9
    fairness.mark_rates()
    request.refresh_from_db()
    assert (request.rate_base_finished, request.rate_mark_finished) == (40, 55)
    assert request.rate_base_at == first_mark - timedelta(seconds=11)


@pytest.mark.django_db
def test_the_status_answer_gives_the_eta(api: Any) -> None:
    created = api.post(
        "/csv/upload", {"file": _csv_file(links("eta", 40))}, format="multipart"
    ).json()  # processed synchronously: by the answer, it has finished
    progress = api.get(f"/csv/status/{created['request_id']}").json()["progress"]
    assert "eta_seconds" in progress
    request = ProcessingRequest.objects.get(pk=created["request_id"])
    ProcessingRequest.objects.filter(pk=request.pk).update(
        status=RequestStatus.PROCESSING,
        images_done=10,
        images_failed=0,
        started_at=timezone.now() - timedelta(seconds=5),
        completed_at=None,
    )
    progress = api.get(f"/csv/status/{created['request_id']}").json()["progress"]
    assert progress["eta_seconds"] == pytest.approx(15, abs=2)


def _csv_file(urls: list[str]) -> Any:
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile("c.csv", csv_bytes([(str(n), f"P{n}", [u]) for n, u in enumerate(urls)]), "text/csv")


# --- The weight -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_admin_sets_a_clients_weight(admin_client: Client) -> None:
    client, _ = api_client_create(name="acme")
    url = f"/admin/requests_app/apiclient/{client.pk}/change/"
    page = admin_client.get(url).content.decode()
    assert 'name="weight"' in page
    form = {"default_webhook_url": "", "weight": "2.5", "keys-TOTAL_FORMS": "0", "keys-INITIAL_FORMS": "0"}
    assert admin_client.post(url, form).status_code == 302
    client.refresh_from_db()
    assert client.weight == 2.5
    refused = admin_client.post(url, {**form, "weight": "0"})
    assert refused.status_code == 200
    client.refresh_from_db()
    assert client.weight == 2.5


@pytest.mark.django_db
def test_create_api_client_sets_the_weight() -> None:
    call_command("create_api_client", "acme", "--weight", "3")
    assert ApiClient.objects.get(user__username="acme").weight == 3
    with pytest.raises(CommandError, match="--weight"):
        call_command("create_api_client", "acme", "--weight", "0")


@pytest.mark.django_db
def test_weights_change_what_choose_picks() -> None:
    heavy, light = shop("heavy", weight=3), shop("light", weight=1)
    one, other = upload(heavy, links("heavy", 40)), upload(light, links("light", 40))
    at_work(other, 4)
    at_work(one, 4)
    at_work(one, 4)
    # 3 busy + a fresh task = 4: heavy's share is 3, it has 2; light's 1, it has 1.
    assert choose() == one.pk
