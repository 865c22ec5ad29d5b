"""What each worker process keeps between batches: the fetch policy, its I/O thread pools,
and the tuning of its memory allocator.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any

from django.conf import settings

from imageproc.engine.http import FetchPolicy, parse_networks

logger = logging.getLogger(__name__)


@cache
def fetch_policy() -> FetchPolicy:
    return FetchPolicy(
        allowed_networks=parse_networks(settings.FETCH_ALLOWED_NETWORKS),
        connect_timeout=settings.FETCH_CONNECT_TIMEOUT,
        total_timeout=settings.FETCH_TOTAL_TIMEOUT,
        max_bytes=settings.IMAGE_MAX_BYTES,
        max_redirects=settings.FETCH_MAX_REDIRECTS,
        user_agent=settings.FETCH_USER_AGENT,
    )


_pool_lock = threading.Lock()
_pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor] | None = None

# glibc's mallopt parameters (malloc.h).
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def io_pools() -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]:
    """The download and the upload pool of this worker process, created lazily after
    django-q2 forks the worker, so that kept-alive connections are reused from one batch
    to the next. Uploads have their own pool, so that an upload never waits behind
    downloads; it is as big, because a worker compresses small images faster than a few
    threads upload them at 100 ms each (the threads share one boto3 client: imageproc/s3.py)."""
    global _pools
    with _pool_lock:
        if _pools is None:
            _tune_malloc()
            threads = settings.IMAGE_IO_THREADS
            _pools = (
                ThreadPoolExecutor(max_workers=threads, thread_name_prefix="imagefetch"),
                ThreadPoolExecutor(max_workers=threads, thread_name_prefix="imagestore"),
            )
        return _pools


_libc: Any = None


def _tune_malloc() -> None:
    """Multi-MB downloads freed by many threads fragment glibc's heap: a worker kept 600 MB
    on 12 MP images. Fixed-threshold mmap for big blocks (returned to the system when
    freed) and two arenas held it near 300 MB (bench/). A no-op where libc is not glibc."""
    global _libc
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, 1024 * 1024)
        libc.mallopt(_M_ARENA_MAX, 2)
        _libc = libc
    except (OSError, AttributeError):
        pass


def trim_malloc() -> None:
    """Give freed heap pages back to the system (after a big image)."""
    if _libc is not None and hasattr(_libc, "malloc_trim"):
        _libc.malloc_trim(0)
