"""What counts as a dependency being briefly down, and how long to wait before trying again.

Three dependencies can go away in the middle of a request: an image's origin, the storage
and the database. (The broker is the fourth: what it loses, the sweeper finds again.) A
transient error of one of them must not fail an image for good, nor spend the attempts
that are there to stop an image that crashes its worker: the pipeline waits and tries
again, within a bound, and only an error that says something about the image itself
(404, not an image, too many pixels) is final.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.db.utils import InterfaceError, OperationalError

from imageproc.engine.http import FetchError

logger = logging.getLogger(__name__)

T = TypeVar("T")


def fetch_is_transient(exc: FetchError) -> bool:
    """Timeouts, refused or reset connections, DNS failures, HTTP 5xx, 408 and 429 (the fetch
    module's own judgement, FetchError.transient)."""
    return bool(exc.transient)


def fetch_retry_after(exc: FetchError) -> float | None:
    """The origin's Retry-After, in seconds, when it sent one."""
    value = exc.retry_after
    return float(value) if value is not None and value >= 0 else None


def backoff(failures: int, *, base: float, cap: float) -> float:
    """The wait after the n-th failure in a row (n >= 1): base, then twice as long each
    time, at most `cap`, less up to a quarter at random so that retries spread out."""
    delay: float = min(cap, base * 2.0 ** max(failures - 1, 0))
    return delay * random.uniform(0.75, 1.0)


def db_is_transient(exc: BaseException) -> bool:
    """The database unreachable or the connection broken: a restart or a fail-over."""
    return isinstance(exc, OperationalError | InterfaceError)


def with_db_retry(fn: Callable[[], T], *, what: str, budget: float | None = None) -> T:
    """Run `fn` (a few queries, or one short transaction), again after a broken connection,
    for IMAGE_DB_RETRY_SECONDS at most. `fn` must be safe to run twice: a commit whose
    answer was lost leaves its conditional UPDATEs nothing to change the second time.
    Inside a transaction the error goes up: only the outermost block can start over."""
    budget = settings.IMAGE_DB_RETRY_SECONDS if budget is None else budget
    deadline = time.monotonic() + budget
    failures = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            if not db_is_transient(exc) or connection.in_atomic_block:
                raise
            failures += 1
            note_db_trouble()
            wait = backoff(failures, base=0.5, cap=5.0)
            if time.monotonic() + wait > deadline:
                raise
            logger.warning("%s: the database is unreachable (%s); trying again in %.1f s", what, exc, wait)
            # The connection is broken for good: the next query opens a new one.
            connection.close()
            time.sleep(wait)


# When the database was last found unreachable: by this process (time.monotonic()), and by
# any process of the deployment (time.time(), in the cache). While a lease may have run out
# only because its worker could not reach the database to renew it, the sweeper takes no
# claim back (imageproc.pipeline.sweep).
_db_trouble_at: float | None = None
_DB_TROUBLE_KEY = "imageproc:db-trouble"


def note_db_trouble() -> None:
    global _db_trouble_at
    _db_trouble_at = time.monotonic()
    try:
        cache.set(_DB_TROUBLE_KEY, time.time(), timeout=int(settings.IMAGE_LEASE_SECONDS) * 2)
    except Exception:  # the cache may be down too; this process remembers it at least
        logger.debug("could not note the database trouble in the cache", exc_info=True)


def seconds_since_db_trouble() -> float | None:
    """Seconds since a process last found the database unreachable; None if not lately."""
    found = [] if _db_trouble_at is None else [time.monotonic() - _db_trouble_at]
    try:
        shared = cache.get(_DB_TROUBLE_KEY)
    except Exception:
        shared = None
    if shared is not None:
        found.append(max(0.0, time.time() - float(shared)))
    return min(found) if found else None


def retry_call(
    fn: Callable[[], T], *, transient: Callable[[BaseException], bool], budget: float, what: str, cap: float = 8.0
) -> T:
    """Run `fn`, again after a transient error, with backoff, for `budget` seconds at most;
    the last error goes up."""
    deadline = time.monotonic() + budget
    failures = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            if not transient(exc):
                raise
            failures += 1
            wait = backoff(failures, base=0.5, cap=cap)
            if time.monotonic() + wait > deadline:
                raise
            logger.warning("%s failed (%s: %s); trying again in %.1f s", what, type(exc).__name__, exc, wait)
            time.sleep(wait)


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
