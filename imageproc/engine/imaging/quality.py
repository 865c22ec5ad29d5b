"""quality="auto": per image, the lowest encoder quality whose perceptual score meets a target.

The score used at run time must cost little next to one encode, so it is not SSIMULACRA2
itself: trial encodes are made of a *sample* of the image (full-resolution tiles aligned to
the codecs' 16-pixel blocks, so the artefacts are those of the full encode), and compared
with SSIM on the luma plane at two scales (numpy, box windows through integral images).
That SSIM is mapped onto the SSIMULACRA2 scale by a per-format table fitted on the benchmark
corpus (bench/quality.py, `--calibrate`), so targets and recorded scores are in SSIMULACRA2
units. A search of a few trial encodes on the sample picks the quality; the caller then makes
one full-size encode at it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import Final

import numpy as np
from PIL import Image

# Targets on the SSIMULACRA2 scale (90: visually lossless at 1:1; 70: high; 50: medium).
LEVELS: Final[dict[str, float]] = {"auto:high": 80.0, "auto:good": 70.0, "auto:eco": 60.0}
LEVELS_ALIAS: Final[dict[str, str]] = {"auto": "auto:good"}

QUALITY_RANGE: Final[dict[str, tuple[int, int]]] = {"jpeg": (10, 95), "webp": (10, 95), "avif": (10, 95)}

_TILE: Final = 128
_MIN_SAMPLE: Final = 48_000  # pixels; an image this small or smaller is its own sample
_MAX_SAMPLE: Final = 196_608  # 12 tiles of 128x128
_SAMPLE_SHARE: Final = 10  # a sample holds about 1/10 of the image's pixels
_MAX_TRIALS: Final = 6

# SSIM (two-scale luma, see ssim()) -> SSIMULACRA2, per output format: piecewise linear
# through these (ssim, ssimulacra2) points, fitted by bench/quality.py --calibrate.
CALIBRATION: Final[dict[str, tuple[tuple[float, float], ...]]] = {
    "jpeg": ((0.0, -40.0), (0.80, 30.0), (0.90, 55.0), (0.95, 70.0), (0.98, 82.0), (1.0, 100.0)),
    "webp": ((0.0, -40.0), (0.80, 30.0), (0.90, 55.0), (0.95, 70.0), (0.98, 82.0), (1.0, 100.0)),
    "avif": ((0.0, -40.0), (0.80, 30.0), (0.90, 55.0), (0.95, 70.0), (0.98, 82.0), (1.0, 100.0)),
}


def target_for(level: str) -> float:
    return LEVELS[LEVELS_ALIAS.get(level, level)]


def sample(im: Image.Image) -> Image.Image:
    """Tiles of `im` spread over it in a grid, 16-pixel aligned, joined into one image."""
    pixels = im.width * im.height
    if pixels <= _MIN_SAMPLE or min(im.size) < 2 * _TILE:
        return im
    budget = min(_MAX_SAMPLE, max(_MIN_SAMPLE, pixels // _SAMPLE_SHARE))
    count = max(2, budget // (_TILE * _TILE))
    columns = max(1, round((count * im.width / im.height) ** 0.5))
    rows = max(1, -(-count // columns))
    columns = min(columns, im.width // _TILE)
    rows = min(rows, im.height // _TILE)
    out = Image.new(im.mode, (columns * _TILE, rows * _TILE))
    for row in range(rows):
        y = ((im.height - _TILE) * (2 * row + 1) // (2 * rows)) // 16 * 16
        for column in range(columns):
            x = ((im.width - _TILE) * (2 * column + 1) // (2 * columns)) // 16 * 16
            out.paste(im.crop((x, y, x + _TILE, y + _TILE)), (column * _TILE, row * _TILE))
    return out


def _luma(im: Image.Image) -> np.ndarray:
    if im.mode in ("RGBA", "LA"):
        im = im.convert("RGB" if im.mode == "RGBA" else "L")
    if im.mode != "L":
        im = im.convert("L")
    return np.asarray(im, dtype=np.float32)


def _box_mean(a: np.ndarray, size: int) -> np.ndarray:
    # Mean over every size x size window ("valid" positions), through an integral image.
    c = np.zeros((a.shape[0] + 1, a.shape[1] + 1), dtype=np.float64)
    np.cumsum(np.cumsum(a, axis=0, dtype=np.float64), axis=1, out=c[1:, 1:])
    s = c[size:, size:] - c[:-size, size:] - c[size:, :-size] + c[:-size, :-size]
    return (s / (size * size)).astype(np.float32)


def _ssim(x: np.ndarray, y: np.ndarray, size: int = 8) -> float:
    if min(x.shape) < size:
        return 1.0 if np.array_equal(x, y) else float(1.0 - np.abs(x - y).mean() / 255.0)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = _box_mean(x, size), _box_mean(y, size)
    sxx = _box_mean(x * x, size) - mx * mx
    syy = _box_mean(y * y, size) - my * my
    sxy = _box_mean(x * y, size) - mx * my
    ssim = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(ssim.mean())


def _half(a: np.ndarray) -> np.ndarray:
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    a = a[:h, :w]
    half: np.ndarray = (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]) * 0.25
    return half


def ssim(reference: np.ndarray, distorted: np.ndarray) -> float:
    """Luma SSIM at full and half resolution, the worse of the two weighted 2:1 to the
    full scale (blocking and ringing show at full scale, blur and banding at both)."""
    full = _ssim(reference, distorted)
    half = _ssim(_half(reference), _half(distorted))
    return (2 * full + half) / 3


def to_ssimulacra2(value: float, fmt: str) -> float:
    points = CALIBRATION[fmt]
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    return float(np.interp(value, xs, ys))


@dataclass(frozen=True)
class Choice:
    quality: int
    score: float  # predicted SSIMULACRA2 of the sample at that quality
    sample_bytes: int  # the sample's encoded size at that quality
    trials: int


def choose_quality(
    sample_image: Image.Image,
    encode: Callable[[Image.Image, int], bytes],
    fmt: str,
    target: float,
) -> Choice:
    """The lowest quality (in QUALITY_RANGE[fmt]) whose predicted score on `sample_image`
    meets `target`, or the top of the range when none does. `encode(image, quality)` makes
    the trial files, decoded here with Pillow."""
    reference = _luma(sample_image)
    low, high = QUALITY_RANGE[fmt]
    tried: dict[int, tuple[float, int]] = {}

    def trial(quality: int) -> float:
        data = encode(sample_image, quality)
        with Image.open(BytesIO(data)) as decoded:
            decoded.load()
            score = to_ssimulacra2(ssim(reference, _luma(decoded)), fmt)
        tried[quality] = (score, len(data))
        return score

    # Invariant: scores are non-decreasing in quality. Bracket [lo_q (fails), hi_q (meets)].
    guess = {"jpeg": 60, "webp": 70, "avif": 60}[fmt] + round((target - 70) * 1.2)
    guess = min(high, max(low, guess))
    lo_q, hi_q = low - 1, high + 1
    quality = guess
    while len(tried) < _MAX_TRIALS and hi_q - lo_q > 1:
        score = trial(quality)
        if score >= target:
            hi_q = quality
        else:
            lo_q = quality
        if hi_q - lo_q <= 1:
            break
        # Next: interpolate between the bracket's known scores, else step by a slope guess.
        below = tried.get(lo_q)
        above = tried.get(hi_q)
        if below is not None and above is not None and above[0] > below[0]:
            estimate = lo_q + (target - below[0]) * (hi_q - lo_q) / (above[0] - below[0])
        else:
            estimate = quality + (target - score) * 1.5
        nxt = round(estimate)
        nxt = min(hi_q - 1, max(lo_q + 1, nxt))
        if nxt > high:
            break
        quality = nxt
    if hi_q > high:  # nothing in range met the target: the best quality there is
        if high not in tried:
            trial(high)
        hi_q = high
    score, size = tried[hi_q]
    return Choice(hi_q, score, size, len(tried))
