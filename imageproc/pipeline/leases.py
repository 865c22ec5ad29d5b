"""Leases on claimed images: how the sweeper tells a dead worker's claim from a slow one.

A task claims images with a lease (IMAGE_LEASE_SECONDS) and, while it holds them, a thread
of its worker process renews the lease every quarter of that, whatever the task is doing:
a download that takes a minute, a big image compressing, a wait for the database. A worker
that dies (SIGKILL, the OOM killer, a machine gone) stops renewing, and the sweeper takes
its images back once the lease has run out: within a minute with the defaults, where it
used to wait for the longest legitimate batch (Q_TIMEOUT + 60 s). A task that hangs keeps
its lease until django-q2's timeout kills its worker.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

from imageproc.pipeline.transient import db_is_transient, note_db_trouble
from products.models import ImageStatus, ProductImage

logger = logging.getLogger(__name__)

# While the database is unreachable, the renewer tries again this often, so that leases are
# renewed as soon as it is back (before a sweeper elsewhere judges them).
RETRY_EVERY = 1.0

_lock = threading.Lock()
_held: set[str] = set()
_renewer: threading.Thread | None = None
_renewer_pid = 0


def lease_end(now: datetime) -> datetime:
    return now + timedelta(seconds=settings.IMAGE_LEASE_SECONDS)


@contextmanager
def holding(token: str) -> Iterator[None]:
    """Renew the lease of the images claimed under `token` until the block ends."""
    with _lock:
        _held.add(token)
        _start_renewer()
    try:
        yield
    finally:
        with _lock:
            _held.discard(token)


def renew(tokens: set[str] | frozenset[str]) -> int:
    """Extend the lease of every image still held under these tokens; one UPDATE."""
    if not tokens:
        return 0
    return ProductImage.objects.filter(claim_token__in=sorted(tokens), status=ImageStatus.PROCESSING).update(
        lease_until=lease_end(timezone.now())
    )


def _start_renewer() -> None:
    """One renewing thread per worker process (started again after a fork). Not in the
    in-process test suite, whose tasks run synchronously inside a test's transaction."""
    global _renewer, _renewer_pid
    if settings.Q_CLUSTER.get("sync"):
        return
    if _renewer is not None and _renewer.is_alive() and _renewer_pid == os.getpid():
        return
    _renewer = threading.Thread(target=_renew_forever, name="lease-renewer", daemon=True)
    _renewer_pid = os.getpid()
    _renewer.start()


def _renew_forever() -> None:
    every = settings.IMAGE_LEASE_SECONDS / 4
    while True:
        with _lock:
            tokens = frozenset(_held)
        wait = every
        if tokens:
            try:
                # This thread lives as long as the process: drop a connection the
                # database closed, or one older than CONN_MAX_AGE, as a request would.
                close_old_connections()
                renew(tokens)
            except Exception as exc:
                if db_is_transient(exc):
                    note_db_trouble()
                    connection.close()
                    wait = RETRY_EVERY
                    logger.warning("could not renew the leases of %d tasks: %s", len(tokens), exc)
                else:
                    logger.exception("could not renew the leases of %d tasks", len(tokens))
        time.sleep(wait)
