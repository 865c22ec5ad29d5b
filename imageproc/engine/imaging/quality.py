"""quality="auto": per image, the lowest encoder quality whose perceptual score meets a target.

The score used at run time must cost little next to one encode, so it is not SSIMULACRA2
itself: trial encodes are made of a *sample* of the image (full-resolution tiles aligned to
the codecs' 16-pixel blocks, so the artefacts are those of the full encode), and compared
with SSIM on the luma plane at two scales (numpy; 8x8 windows every 4 pixels, from 4x4
block sums).
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
_MIN_SAMPLE: Final = 49_152  # pixels (3 tiles); an image this small or smaller is its own sample
_MAX_SAMPLE: Final = 196_608  # 12 tiles of 128x128
_SAMPLE_SHARE: Final = 20  # a sample holds about 1/20 of the image's pixels
_MAX_TRIALS: Final = 6

# SSIM (two-scale luma, see ssim()) -> SSIMULACRA2, per output format: piecewise linear
# through these (ssim, ssimulacra2) points, fitted by bench/quality.py --calibrate.
CALIBRATION: Final[dict[str, tuple[tuple[float, float], ...]]] = {
    "jpeg": (
        (0.0, -40.0),
        (0.896, 34.65),
        (0.9158, 39.48),
        (0.9356, 57.38),
        (0.9473, 62.05),
        (0.9557, 67.39),
        (0.9622, 67.97),
        (0.9707, 75.37),
        (0.9776, 78.88),
        (0.9845, 84.45),
        (0.9933, 88.22),
        (1.0, 100.0),
    ),
    "webp": (
        (0.0, -40.0),
        (0.9045, 36.03),
        (0.9292, 45.41),
        (0.9429, 49.62),
        (0.9495, 55.89),
        (0.9587, 62.77),
        (0.9642, 62.77),
        (0.9713, 69.12),
        (0.9781, 74.18),
        (0.9846, 81.2),
        (0.9906, 85.18),
        (1.0, 100.0),
    ),
    "avif": (
        (0.0, -40.0),
        (0.8587, 15.6),
        (0.8921, 19.86),
        (0.929, 45.65),
        (0.9483, 60.89),
        (0.9642, 65.41),
        (0.9756, 75.17),
        (0.9827, 78.01),
        (0.9897, 84.05),
        (0.9943, 86.44),
        (0.9976, 88.98),
        (1.0, 100.0),
    ),
}


# Least-squares fits (bench/quality.py --calibrate): SSIMULACRA2 ~ MODEL . features(ssim, activity).
# Fitted on the even-numbered photographs of the benchmark; residual SD on the odd ones ~4.4
# SSIMULACRA2 points (bench/results.md), so about half of the images land within +-3.
MODEL: Final[dict[str, tuple[float, ...]]] = {
    "jpeg": (35.1302, 11.3816, 0.3736, -3.4243),
    "webp": (20.3365, 17.0737, -0.0426, -6.2112),
    "avif": (-41.712, 50.5574, -4.5801, -4.5896),
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
    return np.asarray(im, dtype=np.float32) - 128.0  # centred: smaller sums, exact enough in float32


def decoded_luma(data: bytes) -> np.ndarray:
    """The luma plane of an encoded trial, as _luma() gives it (JPEG: decoded alone)."""
    with Image.open(BytesIO(data)) as decoded:
        if decoded.format == "JPEG":
            decoded.draft("L", decoded.size)  # the Y plane only: no chroma, no colour conversion
        decoded.load()
        return _luma(decoded)


def _window_sums(a: np.ndarray) -> np.ndarray:
    """Sums over 8x8 windows every 4 pixels (half-overlapping, so that windows straddle the
    codecs' block edges): 4x4 block sums, then 2x2 of them."""
    h, w = a.shape[0] // 4 * 4, a.shape[1] // 4 * 4
    blocks = a[:h, :w].reshape(h // 4, 4, w // 4, 4).sum(axis=(1, 3))
    sums: np.ndarray = blocks[:-1, :-1] + blocks[1:, :-1] + blocks[:-1, 1:] + blocks[1:, 1:]
    return sums


@dataclass(frozen=True)
class _Reference:
    """A reference plane at one scale, with the window sums that do not change per trial."""

    plane: np.ndarray
    sum_x: np.ndarray
    sum_xx: np.ndarray

    @classmethod
    def of(cls, plane: np.ndarray) -> _Reference:
        return cls(plane, _window_sums(plane), _window_sums(plane * plane))


_C1: Final = (0.01 * 255) ** 2
_C2: Final = (0.03 * 255) ** 2


def _ssim_at(ref: _Reference, y: np.ndarray) -> float:
    if min(ref.plane.shape) < 12:
        return 1.0 - float(np.abs(ref.plane - y).mean()) / 255.0
    n = 64.0
    mx, my = ref.sum_x / n, _window_sums(y) / n
    sxx = ref.sum_xx / n - mx * mx
    syy = _window_sums(y * y) / n - my * my
    sxy = _window_sums(ref.plane * y) / n - mx * my
    # The means are of centred values: add the offset back for the luminance term.
    ux, uy = mx + 128.0, my + 128.0
    ssim = ((2 * ux * uy + _C1) * (2 * sxy + _C2)) / ((ux * ux + uy * uy + _C1) * (sxx + syy + _C2))
    return float(ssim.mean())


def _half(a: np.ndarray) -> np.ndarray:
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    a = a[:h, :w]
    half: np.ndarray = (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]) * 0.25
    return half


class Scorer:
    """SSIM of distorted versions of one luma plane, at full and half resolution, weighted
    2:1 to the full scale (blocking and ringing show at full scale, blur and banding at
    both). 8x8 windows every 4 pixels; the reference's own sums are computed once."""

    def __init__(self, reference: np.ndarray) -> None:
        self._full = _Reference.of(reference)
        self._half = _Reference.of(_half(reference))

    def __call__(self, distorted: np.ndarray) -> float:
        full = _ssim_at(self._full, distorted)
        half = _ssim_at(self._half, _half(distorted))
        return (2 * full + half) / 3


def ssim(reference: np.ndarray, distorted: np.ndarray) -> float:
    """The run-time score of `distorted` against `reference` (luma planes from _luma)."""
    return Scorer(reference)(distorted)


def activity(plane: np.ndarray) -> float:
    """Mean absolute difference between neighbouring pixels of a luma plane: how busy the
    picture is (texture masks artefacts in SSIMULACRA2 more than in SSIM)."""
    return float(np.abs(np.diff(plane, axis=1)).mean() + np.abs(np.diff(plane, axis=0)).mean()) / 2


# The range the fits saw (the benchmark's photographs); outside it they are held at its edge.
_SSIM_RANGE: Final = (0.85, 0.997)
_ACTIVITY_RANGE: Final = (1.0, 12.0)


def features(value: float, busy: float) -> tuple[float, float, float, float]:
    value = min(_SSIM_RANGE[1], max(_SSIM_RANGE[0], value))
    busy = min(_ACTIVITY_RANGE[1], max(_ACTIVITY_RANGE[0], busy))
    u = -float(np.log(1.0 - value))
    return (1.0, u, u * u, float(np.log(1.0 + busy)))


def to_ssimulacra2(value: float, fmt: str, busy: float = 8.0) -> float:
    """The predicted SSIMULACRA2 of an encode whose sample scored `value` (ssim()), for a
    sample of activity `busy` (activity())."""
    model = MODEL.get(fmt)
    if model is not None:
        # Past the fitted range, a perfect match still scores 100 and nothing scores more.
        if value >= 1.0:
            return 100.0
        predicted = float(np.dot(model, features(value, busy)))
        if value > _SSIM_RANGE[1]:
            top = float(np.dot(model, features(_SSIM_RANGE[1], busy)))
            predicted = top + (100.0 - top) * (value - _SSIM_RANGE[1]) / (1.0 - _SSIM_RANGE[1])
        return min(100.0, predicted)
    points = CALIBRATION[fmt]
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    return float(np.interp(value, xs, ys))


# (format, target) -> the quality chosen last in this process: the next search starts there.
_last_choice: dict[tuple[str, float], int] = {}


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
    reference_plane = _luma(sample_image)
    scorer = Scorer(reference_plane)
    busy = activity(reference_plane)
    low, high = QUALITY_RANGE[fmt]
    tried: dict[int, tuple[float, int]] = {}

    def trial(quality: int) -> float:
        data = encode(sample_image, quality)
        score = to_ssimulacra2(scorer(decoded_luma(data)), fmt, busy)
        tried[quality] = (score, len(data))
        return score

    # Invariant: scores are non-decreasing in quality. Bracket [lo_q (fails), hi_q (meets)].
    # First guess: the quality the last image of this format and target needed (a batch of
    # product photos is alike), else a typical one.
    guess = _last_choice.get((fmt, target), {"jpeg": 60, "webp": 70, "avif": 60}[fmt] + round((target - 70) * 1.2))
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
        below, above = tried.get(lo_q), tried.get(hi_q)
        if below is not None and above is not None and above[0] > below[0]:
            # Both ends known: interpolate (secant), kept strictly inside the bracket.
            estimate = lo_q + (target - below[0]) * (hi_q - lo_q) / (above[0] - below[0])
            nxt = min(hi_q - 1, max(lo_q + 1, round(estimate)))
        else:
            # One end open: step towards it, at least 8 qualities (the slope guess may be flat).
            step = max(8, round(abs(target - score) * 1.5))
            nxt = quality + step if score < target else quality - step
            nxt = min(min(hi_q, high + 1) - 1, max(max(lo_q, low - 1) + 1, nxt))
        quality = nxt
    if hi_q > high:  # nothing tried met the target: the best quality there is
        if high not in tried:
            trial(high)
        hi_q = high
    score, size = tried[hi_q]
    _last_choice[(fmt, target)] = hi_q
    return Choice(hi_q, score, size, len(tried))
