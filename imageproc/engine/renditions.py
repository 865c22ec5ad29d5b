"""Renditions: the sizes a shop's pages use, from one decode of the source.

A size is the edge of a square bounding box: each rendition fits inside it, aspect ratio
kept, never enlarged. All the sizes of one source come from one decode: a JPEG is decoded
at the smallest DCT scale (libjpeg's 1/2, 1/4 or 1/8, Pillow's `Image.draft`) whose
picture still covers the largest rendition, so a 12 MP photograph asked at 1600 px or less
is never decoded whole. Colour is converted once, at the decode; then the renditions are
made downwards, each one from the one before (a 200 px one from the 800 px one, not from
the source), which costs a fraction of resizing each from the full decode.

Each rendition is encoded under the same rules as compress(): the format asked (or the
smallest, for "auto"), its quality (auto included, measured on the rendition), metadata,
ICC profile, transparency, and never larger than the input (a resized rendition has no
"original" candidate; a graphic still gets its lossless one). A source no larger than a
box gives one output for every such box: itself at its own size, encoded exactly as
compress() encodes it (its original encoding may win).

The box is square, so fitting the stored pixels is fitting the displayed ones: a JPEG
rendition carries the EXIF orientation as compress()'s output does, and the others are
turned upright at their (small) size.

How the resizing is done was chosen by measurement (bench/renditions.py, the Renditions
section of bench/results.md): RESAMPLE and REDUCING_GAP below.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from PIL import Image

from imageproc.engine.compress import (
    CompressOptions,
    CompressResult,
    DecodedImage,
    decode_source,
    encode_source,
)

__all__ = [
    "MAX_SIZES",
    "SIZE_MAX",
    "SIZE_MIN",
    "Rendition",
    "draft_size",
    "fitted",
    "render",
    "validate_sizes",
]

SIZE_MIN: Final = 16
SIZE_MAX: Final = 8192
MAX_SIZES: Final = 6

# Lanczos: sharper than bicubic at the same cost once reduce() has done the bulk.
RESAMPLE: Final = Image.Resampling.LANCZOS
# Pillow's resize(reducing_gap=g) first reduce()s by whole factors (box averaging, cheap)
# while at least g times the target is left, then resamples. None resamples the whole way.
# Chosen by measurement (bench/results.md, Renditions).
REDUCING_GAP: Final[float | None] = None
# The draft decode covers the largest rendition times this: 1.0 is the smallest DCT scale
# that still covers it. Chosen by measurement (bench/results.md, Renditions).
DRAFT_MARGIN: Final = 1.0


@dataclass(frozen=True)
class Rendition:
    """The output for one box. Boxes at or above the source's size share one result."""

    size: int  # the box asked
    result: CompressResult
    resized: bool  # False: the source at its own size (the box is not smaller than it)


def validate_sizes(sizes: Sequence[object]) -> list[int]:
    """Distinct sizes, largest first. Raises ValueError naming what is wrong."""
    if len(sizes) > MAX_SIZES:
        raise ValueError(f"at most {MAX_SIZES} sizes, got {len(sizes)}")
    out: list[int] = []
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, int):
            raise ValueError(f"a size is a whole number of pixels, got {size!r}")
        if not SIZE_MIN <= size <= SIZE_MAX:
            raise ValueError(f"a size is from {SIZE_MIN} to {SIZE_MAX} pixels, got {size}")
        if size not in out:
            out.append(size)
    return sorted(out, reverse=True)


def fitted(width: float, height: float, box: int) -> tuple[int, int]:
    """(width, height) inside a box x box square, aspect kept, never enlarged, at least 1x1."""
    longest = max(width, height)
    if longest <= box:
        return round(width), round(height)
    return max(1, round(width * box / longest)), max(1, round(height * box / longest))


def draft_size(size: tuple[int, int], largest: int, margin: float = DRAFT_MARGIN) -> tuple[int, int] | None:
    """What to ask Image.draft for: the largest rendition (times `margin`), or None when
    the source must be decoded whole (it is not larger than that)."""
    box = int(largest * margin)
    if max(size) <= box:
        return None
    return fitted(*size, box)


def render(
    data: bytes,
    sizes: Sequence[int],
    options: CompressOptions | None = None,
    *,
    reducing_gap: float | None = REDUCING_GAP,
    draft_margin: float = DRAFT_MARGIN,
    draft: bool = True,
    resample: Image.Resampling = RESAMPLE,
) -> list[Rendition]:
    """One Rendition per size (largest first), from one decode of `data`.

    Raises ImageRejected as compress() does, for the same inputs (the limits are checked on
    the header, before the draft scale is chosen); ValueError for bad sizes or options.
    `reducing_gap`, `draft_margin`, `draft` and `resample` are for the benchmark's comparisons.
    """
    opts = options if options is not None else CompressOptions()
    boxes = validate_sizes(sizes)
    if not boxes:
        raise ValueError("at least one size is needed")
    largest = boxes[0]
    source = decode_source(data, opts, draft=(lambda size: draft_size(size, largest, draft_margin)) if draft else None)
    return render_decoded(source, boxes, opts, reducing_gap=reducing_gap, resample=resample)


def render_decoded(
    source: DecodedImage,
    boxes: list[int],
    opts: CompressOptions,
    *,
    reducing_gap: float | None = REDUCING_GAP,
    resample: Image.Resampling = RESAMPLE,
) -> list[Rendition]:
    """The renditions of an already decoded source; `boxes` largest first."""
    # The picture's aspect: a draft decode's exact extent, not its rounded pixel count. A
    # drafted source is already resized (it only covers the largest box): every box gets a
    # rendition of it, never the input's own encoding.
    width, height = source.extent or source.pixels.size
    renditions: list[Rendition] = []
    own_size: CompressResult | None = None
    pixels = source.pixels
    for box in boxes:
        if not source.resized and max(width, height) <= box:
            if own_size is None:
                own_size = encode_source(source, opts)
            renditions.append(Rendition(box, own_size, resized=False))
            continue
        target = fitted(width, height, box)
        if pixels.size != target:
            # From the draft decode, its exact extent (the first resize only).
            area = (0.0, 0.0, *source.extent) if pixels is source.pixels and source.extent else None
            pixels = pixels.resize(target, resample, box=area, reducing_gap=reducing_gap)
        renditions.append(Rendition(box, encode_source(source.resized_to(pixels), opts), resized=True))
    return renditions
