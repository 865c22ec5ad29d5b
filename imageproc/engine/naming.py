"""Where outputs live: deterministic storage names.

An image's name depends only on its request, its input URL and the output's bytes: a task
that runs twice overwrites its own output instead of leaving a second copy, and an output
whose bytes change (a request reprocessed after the shop replaced a photo at the same URL)
gets a new name, so that caches told to keep outputs forever never serve the old one.
"""

from __future__ import annotations

import hashlib


def source_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


def image_output_name(request_id: object, source_key: str, data: bytes, extension: str) -> str:
    return f"outputs/{request_id}/{source_key[:32]}-{hashlib.sha256(data).hexdigest()[:16]}.{extension}"


def rendition_output_name(
    request_id: object, source_key: str, width: int, height: int, data: bytes, extension: str
) -> str:
    """A rendition's name names its size (its pixels, not the box asked: the boxes at or
    above the source's size share one output, stored once under one name)."""
    digest = hashlib.sha256(data).hexdigest()[:16]
    return f"outputs/{request_id}/{source_key[:32]}-{width}x{height}-{digest}.{extension}"


def csv_output_name(request_id: object) -> str:
    return f"outputs/{request_id}/output.csv"
