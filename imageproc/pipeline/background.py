"""The sweeper in the workers: a thread of every worker process takes its turn.

django-q2's scheduler looks at its schedules about every 30 s and runs them a minute apart
at best: too slow to take a dead worker's images back within a minute, or to queue again
images set aside for two seconds. So every worker process of every cluster runs this loop:
every IMAGE_SWEEP_SECONDS one of them (the first to take a key in the shared cache) sweeps,
and every second one of them queues the images whose time has come (queue_due_images).
With the cache unreachable nobody sweeps from here; the broker shares that Redis, so
there would be nothing to queue to anyway, and the scheduled sweep still runs.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import close_old_connections, connection
from django_q.conf import Conf

from imageproc.pipeline.sweep import queue_due_images, sweep
from imageproc.pipeline.transient import db_is_transient, note_db_trouble

logger = logging.getLogger(__name__)

_SWEEP_KEY = "imageproc:sweep-turn"
_DUE_KEY = "imageproc:due-turn"
# Images set aside for a few seconds are queued again this often (a single indexed query).
DUE_EVERY = 1.0
_started_in = 0  # the pid whose thread runs (a fork does not inherit threads)
_start_lock = threading.Lock()


def start_sweeping(**kwargs: Any) -> None:
    """Start this worker process's sweeping thread (django-q2's post_spawn signal)."""
    global _started_in
    if settings.Q_CLUSTER.get("sync") or Conf.CLUSTER_NAME != Conf.PREFIX:
        # Not in the test suite's synchronous mode, nor in an alternate cluster (the
        # webhooks'): there, async_task would queue image batches on that cluster's queue.
        return
    with _start_lock:
        if _started_in == os.getpid():
            return
        _started_in = os.getpid()
    threading.Thread(target=_sweep_forever, name="sweeper", daemon=True).start()


def _my_turn(key: str, period: float) -> bool:
    # The key lives a little less than a period, so that the next turn is free on time.
    try:
        return bool(cache.add(key, os.getpid(), timeout=max(1, int(period * 0.9))))
    except Exception:
        return False


def _sweep_forever() -> None:
    while True:
        # Spread over the period: the workers of a cluster start together.
        time.sleep(DUE_EVERY * random.uniform(0.5, 1.0))
        try:
            if _my_turn(_SWEEP_KEY, settings.IMAGE_SWEEP_SECONDS):
                # This thread lives as long as the process: drop a connection the database
                # closed, or one older than CONN_MAX_AGE, as a request would.
                close_old_connections()
                sweep()
            elif _my_turn(_DUE_KEY, DUE_EVERY):
                close_old_connections()
                queue_due_images()
        except Exception as exc:  # sweep() contains its own failures; this is a last resort
            if db_is_transient(exc):
                note_db_trouble()
            else:
                logger.exception("background sweep failed")
            connection.close()
