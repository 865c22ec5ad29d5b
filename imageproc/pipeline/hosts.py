"""Fairness toward image origins: a cap on the downloads from one host at once, over every
worker, and a pause for a host that is failing.

Both live in the cache (Redis at scale), so that every worker of the deployment sees them.
Both fail open: with the cache unreachable, downloads go ahead as if neither existed.

- Slots: FETCH_PER_HOST keys per host, each taken with an atomic add and an expiry (the
  longest download and a margin), so that a worker that dies holding one frees it anyway.
  A download that finds every slot of its host taken for SLOT_WAIT is set aside (not
  failed, its budget untouched) and queued again a few seconds later, and its worker goes
  on with other images: one slow origin holds FETCH_PER_HOST download threads at most,
  not every worker. (The price: a big request on one slow origin goes round the queue in
  rounds, FETCH_PER_HOST images at a time.)
- Cool-down: a transient error of a host (5xx, 429, timeout, reset) pauses it for
  FETCH_RETRY_BASE, or its Retry-After: the other images of that host wait for the end of
  the pause without asking it, and nothing hammers an origin that is down.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import threading
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings
from django.core.cache import cache

logger = logging.getLogger(__name__)

# How long a download waits for a slot of its host before it is set aside. A fast origin
# frees slots in milliseconds; a slow one keeps them, and then waiting longer holds a worker.
SLOT_WAIT = 5.0
# Seconds between two tries for a slot.
SLOT_POLL = 0.05


class HostBusy(Exception):
    """The image's host is full or paused: try this image again after `delay` seconds."""

    def __init__(self, host: str, delay: float, reason: str) -> None:
        super().__init__(f"{host}: {reason}")
        self.host = host
        self.delay = delay
        self.reason = reason


@dataclass(frozen=True)
class Slot:
    key: str  # empty: no slot taken (the cache was unreachable)
    value: str


def host_of(url: str) -> str:
    parts = urlsplit(url)
    return (parts.hostname or "").lower() + (f":{parts.port}" if parts.port else "")


def _key(host: str, what: str) -> str:
    # Hashed: a host name may be long or hold characters some cache backends refuse.
    return f"imageproc:host:{hashlib.sha256(host.encode()).hexdigest()[:24]}:{what}"


# Cache errors are logged once a minute at most: a Redis outage must not flood the logs.
_last_warning = 0.0
_warning_lock = threading.Lock()


def _cache_failed(exc: Exception) -> None:
    global _last_warning
    with _warning_lock:
        if time.monotonic() - _last_warning < 60:
            return
        _last_warning = time.monotonic()
    logger.warning("the cache is unreachable (%s: %s): per-host limits are off meanwhile", type(exc).__name__, exc)


def paused_for(host: str) -> float:
    """Seconds left in the host's cool-down (0 when none)."""
    try:
        until = cache.get(_key(host, "pause"))
    except Exception as exc:
        _cache_failed(exc)
        return 0.0
    return max(0.0, float(until) - time.time()) if until else 0.0


def pause(host: str, seconds: float) -> None:
    """Pause the host for `seconds` (never shortens a longer pause)."""
    if seconds <= 0:
        return
    until = time.time() + seconds
    try:
        current = cache.get(_key(host, "pause"))
        if not current or float(current) < until:
            cache.set(_key(host, "pause"), until, timeout=math.ceil(seconds) + 1)
    except Exception as exc:
        _cache_failed(exc)


def acquire(host: str) -> Slot:
    """Take one of the host's FETCH_PER_HOST slots, waiting SLOT_WAIT at most; raises
    HostBusy when all stay taken."""
    value = uuid.uuid4().hex
    # A slot outlives the longest download by a margin, in case its holder dies.
    timeout = math.ceil(settings.FETCH_TOTAL_TIMEOUT) + 10
    deadline = time.monotonic() + SLOT_WAIT
    slots = settings.FETCH_PER_HOST
    while True:
        start = random.randrange(slots)
        try:
            for n in range(slots):
                key = _key(host, f"slot:{(start + n) % slots}")
                if cache.add(key, value, timeout=timeout):
                    return Slot(key, value)
        except Exception as exc:
            _cache_failed(exc)
            return Slot("", value)
        if time.monotonic() >= deadline:
            # Back in a few seconds, spread out, behind whatever was queued meanwhile.
            delay = settings.FETCH_RETRY_BASE * random.uniform(1.0, 3.0)
            raise HostBusy(host, delay, f"{slots} downloads from this host already")
        time.sleep(SLOT_POLL)


def release(slot: Slot) -> None:
    if not slot.key:
        return
    try:
        # Only our own: a slot that expired meanwhile may be someone else's now.
        if cache.get(slot.key) == slot.value:
            cache.delete(slot.key)
    except Exception as exc:
        _cache_failed(exc)
