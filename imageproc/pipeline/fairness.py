"""Fair share of the workers between clients: which request a worker takes its next images from.

The queue only wakes workers; it no longer decides who is served. A batch task may be far
behind in the queue, or hold another client's images: whenever a worker is about to claim
more images (a task starting, or its stream running low: imageproc.pipeline.process), it
asks `choose()` which request is owed them, from the database, which every worker of every
cluster sees alike. The claim itself stays the conditional UPDATE it always was.

The rule, for a worker that would serve client X (request R) next:

- Clients: among those with fresh pending images (first attempts, not set aside), the one
  furthest below its share: its target, the busy workers (this one included) times its
  weight over the weights of all such clients, minus the workers on it now (not counting
  this one). A worker is a stream: the claim token of a task that holds `processing`
  images. So a new client, with no worker, is served at the next claim of any worker,
  whatever the queue holds; two clients on two workers get one each, and neither moves
  again (no ping-pong, which would cost a download's latency per move).
- Ties (a target of 1.5 workers, more clients than workers): the client served least in the
  last FAIR_WINDOW seconds (images claimed / weight) wins, so the workers take turns and a
  client of weight 1 beside one of weight 3 on two workers still gets a quarter of the
  time. A worker keeps its own client for FAIR_SLICE seconds at least when tied, unless
  another has had nothing at all in the window (a newcomer).
- Within a client: the request with the fewest workers on it, then the worker's own, then
  the oldest. A client's two workers serve its two oldest requests side by side; its tenth
  request waits for the first ones, not for other clients (docs/sharing.md says why).

Retries (images that crashed a worker) and images set aside after a transient error keep
their own tasks, queued by the sweeper: they are not taken here.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, F, Q, QuerySet
from django.utils import timezone

from products.models import ImageStatus, ProductImage
from requests_app.models import ApiClient, ProcessingRequest, RequestStatus

logger = logging.getLogger(__name__)

# Seconds of recent service compared between clients that tie on workers.
FAIR_WINDOW = 10.0
# When tied, a worker keeps its client at least this long: each move costs the latency of
# one download (the stream drains before the next one starts).
FAIR_SLICE = 3.0
# Past its slice, a tied worker leaves its client for one served less than this (ratio and
# images, per unit of weight) only.
TIE_MARGIN = 1.25
TIE_IMAGES = 8
# A stream asks again at most this often (it runs low every few images).
CHECK_EVERY = 0.25
# What each client was served lately is read again after this many seconds.
RECENT_TTL = 1.0
# Weights are read again after this many seconds (an admin's change takes effect then).
WEIGHTS_TTL = 5.0
# The ETA's checkpoints of a request's finished count are taken this often (see
# requests_app.selectors.request_progress), and looked at by a worker at most this often.
RATE_MARK_EVERY = 10.0
RATE_LOOK_EVERY = 2.0

ACTIVE = (RequestStatus.PENDING, RequestStatus.PROCESSING)


def fresh_images(request_id: Any) -> QuerySet[ProductImage]:
    """The images of a request a worker may take on at any time: pending first attempts,
    never set aside (the same ones a stream steals, imageproc.pipeline.process)."""
    return ProductImage.objects.filter(request_id=request_id, status=ImageStatus.PENDING, attempts=0, retry_at=None)


def same_request(a: Any, b: Any) -> bool:
    """Request ids compare as UUIDs: tasks carry strings, rows UUIDs."""
    if a is None or b is None:
        return False
    return uuid.UUID(str(a)) == uuid.UUID(str(b))


@dataclass(frozen=True)
class Active:
    """A request that is pending or processing, as choose() sees it."""

    id: Any
    owner_id: Any
    created_at: datetime
    status: str
    rate_mark_at: datetime | None


@dataclass(frozen=True)
class Candidate:
    """A client with fresh images, and the request of it that would be served."""

    owner_id: Any
    request_id: Any
    request_created_at: datetime
    workers: int  # streams on the client's requests, the asking one not counted
    weight: float


def decide(
    candidates: list[Candidate],
    *,
    busy: int | None = None,
    own_owner: Any = None,
    tied_for: float = 0.0,
    recent: dict[Any, int] | None = None,
    mature: frozenset[Any] = frozenset(),
) -> Candidate | None:
    """The rule of the module docstring, on figures already read.

    `busy`: the workers at work, the asking one included (by default the candidates'
    workers + 1); `own_owner`, `tied_for`: the client the asking worker serves, and for how
    many seconds; `recent`: images each client had claimed in the last FAIR_WINDOW seconds;
    `mature`: the clients that have had work for that whole window (only they are compared
    by what they were served: a newcomer's figures say nothing yet)."""
    if not candidates:
        return None
    served = recent or {}

    def per_weight(c: Candidate) -> float:
        return served.get(c.owner_id, 0) / c.weight

    best, near = tied_candidates(candidates, busy=busy)
    own = next((c for c in near if c.owner_id == own_owner), None)
    if own is not None and own in best and len(best) == 1:
        # Its share says stay. Lend it for a slice to a client one worker behind whose
        # workers were clearly slower (a busier machine, a slower origin), so that shares
        # hold in images too; at most one worker is lent, as only those within one worker
        # of the best are looked at.
        lagging = [
            c
            for c in near
            if c is not own
            and {c.owner_id, own.owner_id} <= mature
            and per_weight(c) * TIE_MARGIN + TIE_IMAGES < per_weight(own)
        ]
        if lagging and tied_for >= FAIR_SLICE:
            return min(lagging, key=per_weight)
        return own
    if (
        own is not None
        and own not in best
        and {own.owner_id, *(c.owner_id for c in best)} <= mature
        and all(per_weight(own) < per_weight(c) for c in best)
    ):
        # Lent (or left behind by a newcomer): it stays while its client, among the mature,
        # is still served less than the ones its share would send it to.
        return own
    if len(best) == 1:
        return best[0]
    own = next((c for c in best if c.owner_id == own_owner), None)
    others = [c for c in best if c is not own]
    if own is not None and all(served.get(c.owner_id, 0) > 0 for c in others):
        if tied_for < FAIR_SLICE:
            return own
        # Past its slice, it moves only for a client clearly less served: figures that
        # differ by a few images are noise, and each move costs a download's latency.
        if per_weight(own) <= min(per_weight(c) for c in others) * TIE_MARGIN + TIE_IMAGES:
            return own
    return min(best, key=lambda c: (per_weight(c), c is not own, c.request_created_at, str(c.owner_id)))


def tied_candidates(candidates: list[Candidate], *, busy: int | None = None) -> tuple[list[Candidate], list[Candidate]]:
    """The clients furthest below their share (several when they tie), and those within one
    worker of them (the best included)."""
    workers = busy if busy is not None else sum(c.workers for c in candidates) + 1
    weights = sum(c.weight for c in candidates)

    def deficit(c: Candidate) -> float:
        return workers * c.weight / weights - c.workers

    top = max(deficit(c) for c in candidates)
    best = [c for c in candidates if deficit(c) >= top - 1e-6]
    near = [c for c in candidates if deficit(c) >= top - 1 - 1e-6]
    return best, near


# --- Reading the figures ---------------------------------------------------------------------


def _active() -> list[Active]:
    # order_by(): Meta.ordering is fine here, but keep the read to the index of `status`.
    rows = ProcessingRequest.objects.filter(status__in=ACTIVE).order_by()
    return [Active(*row) for row in rows.values_list("id", "owner_id", "created_at", "status", "rate_mark_at")]


def _streams(exclude_token: str) -> dict[Any, int]:
    """Workers on each request: distinct claim tokens among its `processing` images."""
    pairs = (
        ProductImage.objects.filter(status=ImageStatus.PROCESSING)
        .order_by()
        .values_list("request_id", "claim_token")
        .distinct()
    )
    counts: dict[Any, int] = defaultdict(int)
    for request_id, token in pairs:
        if token and token != exclude_token:
            counts[request_id] += 1
    return counts


_weights_lock = threading.Lock()
_weights: dict[Any, float] = {}
_weights_read = 0.0


def _weights_of(owner_ids: set[Any]) -> dict[Any, float]:
    """Each owner's weight (1.0 for an owner that is no API client, e.g. staff)."""
    global _weights_read
    with _weights_lock:
        stale = time.monotonic() - _weights_read > WEIGHTS_TTL
        missing = owner_ids - set(_weights)
    if stale or missing:
        read = dict(ApiClient.objects.filter(user_id__in=list(owner_ids)).values_list("user_id", "weight"))
        with _weights_lock:
            if stale:
                _weights.clear()
                _weights_read = time.monotonic()
            for owner_id in owner_ids:
                _weights[owner_id] = max(float(read.get(owner_id, 1.0)), 0.01)
    with _weights_lock:
        return {owner_id: _weights.get(owner_id, 1.0) for owner_id in owner_ids}


_recent_lock = threading.Lock()
_recent_read: tuple[float, dict[Any, int]] = (-1e9, {})


def _recent(now: datetime, owner_of: dict[Any, Any]) -> dict[Any, int]:
    """Images each client had claimed in the last FAIR_WINDOW seconds (by the index on
    status and claimed_at: a few hundred rows, whatever the size of the requests); read
    again at most every RECENT_TTL seconds by a worker process."""
    global _recent_read
    with _recent_lock:
        read_at, by_request = _recent_read
    if time.monotonic() - read_at > RECENT_TTL:
        rows = (
            ProductImage.objects.filter(
                status__in=(ImageStatus.PROCESSING, ImageStatus.DONE, ImageStatus.FAILED),
                claimed_at__gte=now - timedelta(seconds=FAIR_WINDOW),
            )
            .order_by()
            .values_list("request_id")
            .annotate(n=Count("id"))
            .values_list("request_id", "n")
        )
        by_request = dict(rows)
        with _recent_lock:
            _recent_read = (time.monotonic(), by_request)
    served: dict[Any, int] = defaultdict(int)
    for request_id, n in by_request.items():
        if request_id in owner_of:
            served[owner_of[request_id]] += n
    return served


def choose(*, current: Any = None, token: str = "", since: float | None = None) -> Any | None:
    """The request whose fresh images a worker should claim next, or None when no request
    has any. `current`: the request the worker serves now (kept when the rule allows);
    `token`: its claim token (its own images do not count as another worker);
    `since`: time.monotonic() when it began to serve `current`."""
    now = timezone.now()
    active = _active()
    _mark_rates(now, active)
    if not active:
        return None
    if len(active) == 1:
        # Alone: nothing to share (one cheap read per claim).
        only = active[0]
        if same_request(only.id, current) or fresh_images(only.id).exists():
            return only.id
        return None
    streams = _streams(token)
    by_owner: dict[Any, list[Active]] = defaultdict(list)
    for request in active:
        by_owner[request.owner_id].append(request)
    weights = _weights_of(set(by_owner))
    candidates = []
    own_owner = None
    for owner_id, requests in by_owner.items():
        if any(same_request(r.id, current) for r in requests):
            own_owner = owner_id
        # Within a client: fewest workers, then the worker's own request, then the oldest.
        requests.sort(key=lambda r: (streams.get(r.id, 0), not same_request(r.id, current), r.created_at))
        for request in requests:
            if same_request(request.id, current) or fresh_images(request.id).exists():
                candidates.append(
                    Candidate(
                        owner_id=owner_id,
                        request_id=request.id,
                        request_created_at=request.created_at,
                        workers=sum(streams.get(r.id, 0) for r in requests),
                        weight=weights[owner_id],
                    )
                )
                break
    if not candidates:
        return None
    busy = sum(streams.get(r.id, 0) for r in active) + 1
    recent = None
    if len(tied_candidates(candidates, busy=busy)[1]) > 1:
        recent = _recent(now, {r.id: r.owner_id for r in active})
    first_active: dict[Any, datetime] = {}
    for request in active:
        first_active[request.owner_id] = min(request.created_at, first_active.get(request.owner_id, request.created_at))
    window = now - timedelta(seconds=FAIR_WINDOW)
    mature = frozenset(owner for owner, since_at in first_active.items() if since_at <= window)
    tied_for = time.monotonic() - since if since is not None else 0.0
    chosen = decide(candidates, busy=busy, own_owner=own_owner, tied_for=tied_for, recent=recent, mature=mature)
    return chosen.request_id if chosen else None


# --- What the pipeline calls ---------------------------------------------------------------


_checks_lock = threading.Lock()
_checks: dict[str, tuple[float, bool]] = {}


def yield_to_fairer(*, request_id: Any, token: str, since: float) -> bool:
    """Called by a stream about to claim more images of its request: True when another
    request is owed this worker (the stream then takes nothing more, finishes what it
    holds, and its task moves on: imageproc.pipeline.work). Asked at most every
    CHECK_EVERY seconds per stream."""
    if not settings.IMAGE_FAIR_SHARE:
        _mark_rates(timezone.now(), None)
        return False
    moment = time.monotonic()
    with _checks_lock:
        last = _checks.get(token)
        if last is not None and moment - last[0] < CHECK_EVERY:
            return last[1]
    chosen = choose(current=request_id, token=token, since=since)
    leave = chosen is not None and not same_request(chosen, request_id)
    with _checks_lock:
        for old in [t for t, (at, _) in _checks.items() if moment - at > 60]:
            del _checks[old]
        _checks[token] = (moment, leave)
    if leave:
        logger.debug("request %s: this worker moves on to request %s", request_id, chosen)
    return leave


def fresh_batch(request_id: Any, *, urls: int | None = None) -> list[Any]:
    """Ids of up to `urls` (IMAGE_BATCH_SIZE) distinct URLs of the request's fresh images,
    with every fresh copy of each, so that each URL is still fetched once per request."""
    urls = urls or settings.IMAGE_BATCH_SIZE
    fresh = fresh_images(request_id)
    keys: list[str] = []
    for key in fresh.order_by().values_list("source_key", flat=True)[: 4 * urls]:
        if key not in keys:
            keys.append(key)
            if len(keys) == urls:
                break
    if not keys:
        return []
    return list(fresh.filter(source_key__in=keys).order_by().values_list("id", flat=True))


def fresh_only(image_ids: list[Any]) -> bool:
    """Whether none of these images is a retry or set aside: a batch of first attempts only,
    which any worker may take instead, so its task may serve another request first."""
    waiting = ProductImage.objects.filter(pk__in=list(image_ids), status=ImageStatus.PENDING)
    return not waiting.filter(Q(attempts__gt=0) | Q(retry_at__isnull=False)).exists()


# --- Checkpoints for the ETA ------------------------------------------------------------------


_marks_lock = threading.Lock()
_marks_looked = 0.0


def _mark_rates(now: datetime, active: list[Active] | None) -> None:
    """Move the checkpoints of the finished count of processing requests whose last one is
    RATE_MARK_EVERY old: the mark becomes the base, the count now the mark (one conditional
    UPDATE for them all, which one worker wins). The ETA is measured between the base and
    now: over the last 10-20 s, at the request's current share of the workers."""
    global _marks_looked
    moment = time.monotonic()
    with _marks_lock:
        if moment - _marks_looked < RATE_LOOK_EVERY:
            return
        _marks_looked = moment
    try:
        if active is None:
            active = _active()
        due = now - timedelta(seconds=RATE_MARK_EVERY)
        stale = [
            r.id
            for r in active
            if r.status == RequestStatus.PROCESSING and (r.rate_mark_at is None or r.rate_mark_at <= due)
        ]
        if not stale:
            return
        ProcessingRequest.objects.filter(
            Q(rate_mark_at__isnull=True) | Q(rate_mark_at__lte=due), pk__in=stale, status=RequestStatus.PROCESSING
        ).update(
            rate_base_at=F("rate_mark_at"),
            rate_base_finished=F("rate_mark_finished"),
            rate_mark_at=now,
            rate_mark_finished=F("images_done") + F("images_failed"),
        )
    except Exception:  # the ETA is a nicety: never let it stop a worker
        logger.warning("could not take the ETA checkpoints", exc_info=True)


def mark_rates() -> None:
    """Take the ETA checkpoints now if due (a task starting calls this)."""
    _mark_rates(timezone.now(), None)
